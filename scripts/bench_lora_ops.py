"""Offline A/B of the LoRA kernels inside one vLLM engine (no HTTP): base vs mixed-adapter throughput,
and greedy parity with transformers + PEFT.

Run it once per kernel choice, under the engine lock:

    flock /tmp/loradock-engine.lock env LORADOCK_LORA_OPS=vllm .venv/bin/python scripts/bench_lora_ops.py
    flock /tmp/loradock-engine.lock env LORADOCK_LORA_OPS=grouped .venv/bin/python scripts/bench_lora_ops.py
    flock /tmp/loradock-engine.lock .venv/bin/python scripts/bench_lora_ops.py --parity --dtype float32

Prints one JSON line. Adapters are synthetic (bench-NN, made in --adapters-dir if missing).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(var, "1")

BASE = Path("models/SmolLM2-135M-Instruct")
PROMPTS = [
    "Write one sentence about the sea.",
    "What is the capital of France?",
    "List three colors.",
    "Explain gravity briefly.",
    "Give me a tip for learning to cook.",
    "Describe a cat in a few words.",
    "Why is the sky blue?",
    "Name a famous scientist and say why.",
]


def chat_ids(tok, prompt: str) -> list[int]:
    from loradock.core.template import encode

    return encode(tok, [{"role": "user", "content": prompt}], add_generation_prompt=True)


def run(llm, prompts: list[list[int]], params, loras) -> tuple[float, list[list[int]]]:
    from vllm.inputs import TokensPrompt

    t0 = time.perf_counter()
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, lora_request=loras, use_tqdm=False)
    dt = time.perf_counter() - t0
    return dt, [list(o.outputs[0].token_ids) for o in outs]


def peft_greedy(store: Path, names: list[str], prompts: list[list[int]], max_tokens: int) -> dict:
    """Greedy continuations from transformers + PEFT (float32) for base (None) and each adapter."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(BASE), dtype=torch.float32)
    expected: dict = {}

    def gen(m, ids):
        with torch.no_grad():
            out = m.generate(
                torch.tensor([ids]), max_new_tokens=max_tokens, do_sample=False, eos_token_id=None, pad_token_id=0
            )
        return out[0, len(ids) :].tolist()

    expected[None] = [gen(model, p) for p in prompts]
    for name in names:
        pm = PeftModel.from_pretrained(model, str(store / name))
        expected[name] = [gen(pm, p) for p in prompts]
        model = pm.unload()
    return expected


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--adapters-dir", type=Path, default=Path("/tmp/loradock-bench-store"))
    ap.add_argument("--adapters", type=int, default=8, help="distinct adapters in the mixed run")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=32, help="engine max_num_seqs")
    ap.add_argument("--max-loras", type=int, default=8)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best of each is kept")
    ap.add_argument("--parity", action="store_true", help="check greedy tokens vs transformers+PEFT instead")
    args = ap.parse_args()

    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    from loradock.bench.adapters import make_bench_adapters

    names = make_bench_adapters(args.adapters_dir, BASE, args.adapters)
    llm = LLM(
        model=str(BASE),
        dtype=args.dtype,
        enable_lora=True,
        max_loras=args.max_loras,
        max_cpu_loras=max(args.max_loras, args.adapters),
        max_lora_rank=16,
        max_num_seqs=args.concurrency,
        gpu_memory_utilization=0.5,
        max_model_len=2048,
    )
    tok = llm.get_tokenizer()
    loras = {n: LoRARequest(n, i + 1, str(args.adapters_dir / n)) for i, n in enumerate(names)}
    prompts = [chat_ids(tok, p) for p in PROMPTS]
    result: dict = {"ops": os.environ.get("LORADOCK_LORA_OPS", "grouped"), "dtype": args.dtype}

    if args.parity:
        n_tok = 24
        params = SamplingParams(temperature=0, max_tokens=n_tok, ignore_eos=True)
        check = names[:3]
        expected = peft_greedy(args.adapters_dir, check, prompts, n_tok)
        # One mixed batch: every prompt with the base and with each adapter, interleaved.
        jobs = [(name, i) for i in range(len(prompts)) for name in (None, *check)]
        _, got = run(llm, [prompts[i] for _, i in jobs], params, [loras[n] if n else None for n, _ in jobs])
        bad = [(n, PROMPTS[i]) for (n, i), toks in zip(jobs, got, strict=True) if toks != expected[n][i]]
        result.update(parity_checked=len(jobs), parity_mismatches=bad)
        print(json.dumps(result))
        return

    params = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    batch = [prompts[i % len(prompts)] for i in range(args.requests)]
    run(llm, batch[: args.max_loras], params, [loras[n] for n in names[: args.max_loras]])  # load + warm up
    scenarios = {
        "base": [None] * args.requests,
        "mixed": [loras[names[i % len(names)]] for i in range(args.requests)],
        "single": [loras[names[0]]] * args.requests,
    }
    # Other work shares these 2 cores: interleave the scenarios and keep each one's best round.
    for _ in range(args.rounds):
        for label, reqs in scenarios.items():
            dt, outs = run(llm, batch, params, reqs)
            tok_s = round(sum(len(o) for o in outs) / dt, 1)
            result[f"{label}_tok_s"] = max(result.get(f"{label}_tok_s", 0.0), tok_s)
    result["mixed_over_base"] = round(result["mixed_tok_s"] / result["base_tok_s"], 3)
    keys = ("adapters", "requests", "max_tokens", "concurrency", "max_loras", "rounds")
    result["setup"] = {k: getattr(args, k) for k in keys}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
