"""Greedy output through the server agrees with transformers + PEFT on every served adapter (and the base).

- In float32 the tokens are identical (a float32 server: the shared one when it runs float32, else its own).
- In the server's default dtype (bfloat16 on CPUs with AVX-512 BF16 or AMX) two implementations of the same
  bf16 model round differently, so exact equality is not the contract. PEFT is run in that dtype over the
  server's own tokens (teacher forcing): the first ``FIRST_TOKENS`` tokens must be PEFT's greedy picks unless
  PEFT's top two logits tie in that dtype, and every later one must be PEFT's top-1 wherever PEFT's margin
  between its top two logits is above ``MARGIN`` (where it is below, either pick is a rounding away). The
  served token must always be among PEFT's top ``TOP_K``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch

from loradock.core.engine_args import resolve_dtype
from loradock.core.procs import NotHealthy, free_port, log_tail, start_logged, stop, wait_healthy
from loradock.core.settings import Settings
from loradock.core.template import encode
from tests.conftest import BASE_MODEL, REPO

pytestmark = pytest.mark.engine
PROMPTS = [
    "What is the capital of France?",
    "Write one sentence about cats.",
    "List three colors.",
    "Explain gravity briefly.",
]
MAX_TOKENS = 24
FIRST_TOKENS = 3  # must match unless PEFT's top two tie in the dtype
MARGIN = 0.5  # logits; measured bf16 gaps between vLLM and PEFT stay well below it (docs/performance.md)
TOP_K = 5
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class FloatServer:
    url: str
    api_key: str


def _served_dtype() -> str:
    """The dtype the shared server runs (it inherits this process's environment)."""
    return resolve_dtype(Settings(base_model=BASE_MODEL).dtype)


@pytest.fixture(scope="module")
def fp32_server(server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FloatServer]:
    """A float32 server over the shared server's store (the shared one itself when it runs float32).

    The session already holds the engine lock (tests/conftest.py); this second engine lives for this module.
    """
    if _served_dtype() == "float32":
        yield FloatServer(server.url, server.api_key)
        return
    root = tmp_path_factory.mktemp("fp32")
    port = free_port()
    env = {**server.env, "LORADOCK_DTYPE": "float32", "LORADOCK_RAG_DIR": str(root / "rag"),
           "LORADOCK_DB_URL": f"sqlite:///{root / 'loradock.db'}"}
    log = root / "server.log"
    proc = start_logged([sys.executable, "-m", "loradock", "serve", "--port", str(port)], log, env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, timeout=300)
    except NotHealthy as e:
        proc.kill()
        raise NotHealthy(f"{e}; server log:\n{log_tail(log, 5000)}") from e
    yield FloatServer(url, server.api_key)
    stop(proc)


def _models(server) -> list[str]:
    return [server.base, *server.adapter_names]


def _peft(base, store_dir, name: str | None):
    """PEFT over ``base`` with adapter ``name`` (None: the base model itself, adapter-free)."""
    from peft import PeftModel

    if name is None:
        return base
    return PeftModel.from_pretrained(base, str(store_dir / name)).eval()


def _served(url: str, api_key: str, model: str, messages: list[dict]) -> list[str]:
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0, timeout=120)
    r = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=MAX_TOKENS,
                                       logprobs=True)
    return [lp.token for lp in r.choices[0].logprobs.content]


def test_float32_is_token_identical_to_peft(fp32_server, server) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(BASE_MODEL))
    base = AutoModelForCausalLM.from_pretrained(str(BASE_MODEL), dtype=torch.float32).eval()
    mismatches = []
    for model_name in _models(server):
        adapter = None if model_name == server.base else model_name
        model = _peft(base, server.adapters_dir, adapter)
        for prompt in PROMPTS:
            messages = [{"role": "user", "content": prompt}]
            ids = torch.tensor([encode(tok, messages, add_generation_prompt=True)])
            with torch.no_grad():
                out = model.generate(ids, max_new_tokens=MAX_TOKENS, do_sample=False)
            expected = [tok.decode([t]) for t in out[0, ids.shape[1]:].tolist() if t != tok.eos_token_id]
            served = _served(fp32_server.url, fp32_server.api_key, model_name, messages)
            if served and served[-1] == tok.eos_token:
                served = served[:-1]
            if expected != served:
                mismatches.append((model_name, prompt, "".join(expected), "".join(served)))
        if adapter is not None:
            base = model.unload()
    assert not mismatches, mismatches


def _tie(logit: float, dtype: torch.dtype) -> float:
    """One unit in the last place of ``logit`` in ``dtype``: two logits closer than that are a tie there."""
    return float(torch.finfo(dtype).eps) * 2.0 ** math.floor(math.log2(max(abs(logit), 1e-6)))


def _check_teacher_forced(model, tok, prompt_ids: list[int], served: list[str],
                          dtype: torch.dtype) -> tuple[list[str], list[float]]:
    """Walk the served tokens through PEFT; return the disagreements that break the contract and PEFT's
    margin at every step where the two picked different tokens."""
    past, ids = None, torch.tensor([prompt_ids])
    problems, gaps = [], []
    for step, token in enumerate(served):
        with torch.no_grad():
            out = model(input_ids=ids, past_key_values=past, use_cache=True)
        past, logits = out.past_key_values, out.logits[0, -1].float()
        top = torch.topk(logits, TOP_K)
        margin = float(top.values[0] - top.values[1])
        names = [tok.decode([int(i)]) for i in top.indices]
        if names[0] != token:
            gaps.append(margin)
            allowed = _tie(float(top.values[0]), dtype) if step < FIRST_TOKENS else MARGIN
            if margin > allowed:
                problems.append(f"step {step}: served {token!r}, PEFT {names[0]!r} by a margin of {margin:.3f}")
        if token not in names:
            problems.append(f"step {step}: served {token!r} is not in PEFT's top {TOP_K} {names}")
            break
        ids = top.indices[names.index(token)].view(1, 1)
    return problems, gaps


def test_default_dtype_agrees_with_peft_where_peft_is_decided(server) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = _served_dtype()
    tok = AutoTokenizer.from_pretrained(str(BASE_MODEL))
    base = AutoModelForCausalLM.from_pretrained(str(BASE_MODEL), dtype=DTYPES.get(dtype, torch.float32)).eval()
    failures, gaps = [], []
    for model_name in _models(server):
        adapter = None if model_name == server.base else model_name
        model = _peft(base, server.adapters_dir, adapter)
        for prompt in PROMPTS:
            messages = [{"role": "user", "content": prompt}]
            served = _served(server.url, server.api_key, model_name, messages)
            problems, seen = _check_teacher_forced(model, tok, encode(tok, messages, add_generation_prompt=True),
                                                   served, base.dtype)
            gaps += seen
            failures += [(model_name, prompt, p) for p in problems]
        if adapter is not None:
            base = model.unload()
    print(f"dtype {dtype}: {len(gaps)} steps where the server picked another token than PEFT, PEFT's margins "
          f"there: {sorted(round(g, 3) for g in gaps)}", file=sys.stderr)
    assert not failures, failures
