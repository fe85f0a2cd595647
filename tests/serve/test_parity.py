"""Greedy output through the server equals transformers + PEFT on the same adapter, token for token."""

from __future__ import annotations

import pytest
import torch

from loradock.core.template import encode
from tests.conftest import BASE_MODEL

pytestmark = pytest.mark.engine
PROMPTS = [
    "What is the capital of France?",
    "Write one sentence about cats.",
    "List three colors.",
    "Explain gravity briefly.",
]
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def hf():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(BASE_MODEL))
    return tok, AutoModelForCausalLM.from_pretrained(str(BASE_MODEL), dtype=torch.float32)


def test_every_served_adapter_matches_peft(client, server, hf):
    from peft import PeftModel

    tok, base = hf
    mismatches = []
    for name in server.adapter_names:
        model = PeftModel.from_pretrained(base, str(server.adapters_dir / name))
        model.eval()
        for prompt in PROMPTS:
            messages = [{"role": "user", "content": prompt}]
            ids = torch.tensor([encode(tok, messages, add_generation_prompt=True)])
            with torch.no_grad():
                out = model.generate(ids, max_new_tokens=MAX_TOKENS, do_sample=False)
            expected = [t for t in out[0, ids.shape[1]:].tolist() if t != tok.eos_token_id]
            r = client.chat.completions.create(model=name, messages=messages, temperature=0,
                                               max_tokens=MAX_TOKENS, logprobs=True)
            served = [lp.token for lp in r.choices[0].logprobs.content]
            if served and served[-1] == tok.eos_token:
                served = served[:-1]
            if [tok.decode([t]) for t in expected] != served:
                mismatches.append((name, prompt, tok.decode(expected), r.choices[0].message.content))
        base = model.unload()
    assert not mismatches, mismatches
