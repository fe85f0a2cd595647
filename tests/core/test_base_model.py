"""The embedded base model folder: intact, identified, and it answers like SmolLM2."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from loradock.core.base_model import checksum_ok, load_base_info
from loradock.core.template import encode
from tests.conftest import BASE_MODEL


def test_materialized_folder_is_intact_and_identified():
    assert checksum_ok(BASE_MODEL)
    info = load_base_info(BASE_MODEL)
    assert info.name == "SmolLM2-135M-Instruct" and len(info.sha256) == 64
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= info.module_names
    assert load_base_info(BASE_MODEL).sha256 == info.sha256  # cached identity is stable


def test_base_model_knows_paris():
    tok = AutoTokenizer.from_pretrained(str(BASE_MODEL))
    model = AutoModelForCausalLM.from_pretrained(str(BASE_MODEL), dtype=torch.float32)
    ids = torch.tensor([encode(tok, [{"role": "user", "content": "What is the capital of France?"}], True)])
    out = model.generate(ids, max_new_tokens=16, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_settings_env_and_yaml(tmp_path, monkeypatch):
    from loradock.core.settings import load_settings

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("max_lora_rank: 32\nport: 9000\n")
    monkeypatch.setenv("LORADOCK_PORT", "9100")
    s = load_settings(cfg)
    assert s.max_lora_rank == 32 and s.port == 9100  # env beats file
    assert load_settings(cfg, port=9200).port == 9200  # flags beat env
