"""Recipes: YAML < command-line overrides, checks that name the flag, and `train plan` numbers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from loradock.train.config import RecipeError, build_config

REPO = Path(__file__).resolve().parents[2]


def test_overrides_beat_the_recipe_and_alpha_follows_rank(tmp_path: Path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("data: d.jsonl\nlora_r: 8\nlora_alpha: 16\nlearning_rate: 2e-4\nepochs: 2\n")
    cfg = build_config("sft", recipe, {"lora_r": 4, "target_modules": "q_proj,k_proj", "max_steps": "7"})
    assert cfg.name == "mine"  # from the file name
    assert cfg.lora_r == 4 and cfg.lora_alpha == 8.0  # alpha re-derived as 2r when only the rank changes
    assert cfg.learning_rate == pytest.approx(2e-4)  # YAML reads `2e-4` as a string; coerced to float
    assert cfg.target_modules == ["q_proj", "k_proj"]
    assert cfg.max_steps == 7 and cfg.epochs == 2.0
    cfg = build_config("sft", recipe, {"lora_r": 4, "lora_alpha": 32})
    assert cfg.lora_alpha == 32.0


def test_shipped_recipes_resolve_by_name():
    cfg = build_config("sft", "json-answer", {})
    assert cfg.name == "json-answer" and cfg.data == "data/json_answer_train.jsonl"
    assert 8 <= cfg.lora_r <= 16 and cfg.lora_alpha == 2 * cfg.lora_r
    assert build_config("dpo", "concise", {}).beta > 0
    with pytest.raises(RecipeError, match="is a sft recipe; run `loradock train sft`"):
        build_config("dpo", REPO / "train/recipes/sft/pirate.yaml", {})


@pytest.mark.parametrize(
    ("overrides", "flag"),
    [
        ({"lora_r": 0}, "--lora-r must be positive"),
        ({"learning_rate": -1}, "--learning-rate must be positive"),
        ({"quantization": "int3"}, "--quantization must be one of none, nf4"),
        ({"target_modules": "q_proj,embed_tokens"}, "--target-modules must not include ['embed_tokens']"),
        ({"val_fraction": 0.9}, "--val-fraction must be in"),
        ({"lora_r": "eight"}, "--lora-r: expected int"),
        ({"name": "Bad Name!"}, "--name: invalid adapter name"),
    ],
)
def test_checks_name_the_flag(overrides, flag):
    with pytest.raises(RecipeError) as e:
        build_config("sft", None, overrides)
    assert flag in str(e.value)


def test_unknown_recipe_key_is_refused(tmp_path: Path):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("lora_rank: 8\n")
    with pytest.raises(RecipeError, match="unknown key"):
        build_config("sft", recipe, {})


def test_cli_refuses_rank_above_server_limit(cli, tmp_path: Path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    result = cli("train", "sft", "--data", data, "--name", "x", "--lora-r", "32", "--adapters-dir", tmp_path / "s")
    assert result.exit_code == 2
    assert "--lora-r 32 is above the server's max LoRA rank 16" in result.output


def test_plan_reports_parameters_size_and_memory(cli):
    result = cli("train", "plan", "--recipe", "json-answer")
    assert result.exit_code == 0, result.output
    out = result.output
    # SmolLM2-135M: 30 layers; q_proj 576->576, v_proj 576->192; r=8 -> 8*(576+576) + 8*(576+192) per layer.
    trainable = 30 * (8 * (576 + 576) + 8 * (576 + 192))
    assert f"trainable params: {trainable:,d} || all params: {134_515_008 + trainable:,d}" in out
    assert "trainable%: 0.3414" in out
    assert re.search(r"adapter size on disk\s+│\s+1\.7\d MiB", out)
    for row in ("weights only (inference)", "full fine-tune (AdamW)", "LoRA (frozen float base)", "QLoRA"):
        assert row in out
    # Full fine-tuning in fp32: 4 (weights) + 4 (grads) + 8 (AdamW) bytes per parameter.
    assert f"{134_515_008 * 16 / 2**30:.2f} GiB" in out
    assert f"{134_515_008 * 4 / 2**20:.2f} MiB" in out  # fp32 weights only

    wider = cli(
        "train", "plan", "--recipe", "json-answer", "--lora-r", "16", "--target-modules", "q_proj,k_proj,v_proj,o_proj"
    )
    assert f"trainable params: {30 * 16 * (4 * 576 + 2 * 192 + 576 + 576):,d}" in wider.output.replace("\n", "")
