"""Real SFT and DPO runs on CPU through the CLI: a few steps, tiny rows, published adapters that validate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from loradock.core.store import AdapterStore
from loradock.core.template import template_sha256
from loradock.core.validate import validate_adapter
from loradock.train.data import data_sha256
from tests.train.helpers import TINY_QA, chat, pair

pytestmark = pytest.mark.train
FAST = ["--batch-size", "2", "--max-length", "64", "--logging-steps", "1", "--val-fraction", "0.25"]


def lora_b_nonzero(folder: Path) -> bool:
    """PEFT initialises lora_B to zeros: any non-zero value proves optimizer steps happened."""
    tensors = load_file(folder / "adapter_model.safetensors")
    return any(t.abs().sum() > 0 for k, t in tensors.items() if "lora_B" in k)


def test_sft_publishes_a_valid_adapter_with_manifest_and_curves(cli, write_jsonl, tmp_path, base_info):
    rows = [chat(q, a) for q, a in TINY_QA] + [chat(*TINY_QA[0]), chat("Capital of Chile?", " ")]
    data = write_jsonl("sft.jsonl", rows)
    store_dir = tmp_path / "store"
    args = [
        "train",
        "sft",
        "--data",
        data,
        "--name",
        "tiny-sft",
        "--adapters-dir",
        store_dir,
        "--output-dir",
        tmp_path / "ckpt",
        "--max-steps",
        "3",
        "--eval-steps",
        "1",
        *FAST,
    ]

    refused = cli(*args)
    assert refused.exit_code == 2
    assert "fails `loradock data check`" in refused.output and "--drop-invalid" in refused.output

    result = cli(*args, "--drop-invalid")
    assert result.exit_code == 0, result.output
    folder = store_dir / "tiny-sft"
    manifest = validate_adapter(folder, base_info)  # exactly what the server runs before serving it
    assert manifest.template_sha256 == template_sha256()
    assert manifest.base.sha256 == base_info.sha256
    assert (manifest.rank, manifest.alpha, manifest.target_modules) == (8, 16.0, ["q_proj", "v_proj"])
    assert manifest.provenance.method == "sft"
    assert manifest.provenance.data_sha256 == data_sha256(data)
    assert manifest.provenance.recipe["max_steps"] == 3 and manifest.provenance.recipe["drop_invalid"] is True
    metrics = manifest.metrics
    assert metrics["dropped_rows"] == {"empty": 1, "duplicate": 1}
    assert metrics["train_rows"] + metrics["val_rows"] == len(TINY_QA)
    assert [s for s, _ in metrics["train_loss"]] == [1, 2, 3]
    assert [s for s, _ in metrics["val_loss"]] == [1, 2, 3]
    assert metrics["best_step"] in (1, 2, 3) and metrics["eval"]["eval_loss"] == pytest.approx(
        min(v for _, v in metrics["val_loss"]), abs=1e-3
    )
    assert (folder / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    config = json.loads((folder / "adapter_config.json").read_text())
    assert not config.get("modules_to_save") and config["r"] == 8
    assert lora_b_nonzero(folder)
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "loss_curve.png",
        "manifest.json",
    ]

    # The name is taken: refused before any training, unless --overwrite.
    again = cli(*args, "--drop-invalid")
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_sft_resumes_from_the_last_checkpoint(cli, write_jsonl, tmp_path, base_info):
    data = write_jsonl("sft.jsonl", [chat(q, a) for q, a in TINY_QA])
    common = [
        "train",
        "sft",
        "--data",
        data,
        "--name",
        "resumed",
        "--adapters-dir",
        tmp_path / "store",
        "--output-dir",
        tmp_path / "ckpt",
        "--eval-steps",
        "2",
        *FAST,
    ]
    assert cli(*common, "--max-steps", "2").exit_code == 0
    first_state = tmp_path / "ckpt" / "checkpoint-2" / "trainer_state.json"
    stamp = first_state.stat().st_mtime_ns
    result = cli(*common, "--max-steps", "4", "--resume", "--overwrite")
    assert result.exit_code == 0, result.output
    metrics = AdapterStore(tmp_path / "store").read_manifest("resumed").metrics
    assert metrics["steps"] == 4
    assert [s for s, _ in metrics["train_loss"]] == [1, 2, 3, 4]
    # Continued from checkpoint-2 (left untouched) instead of retraining steps 1-2 from scratch.
    assert first_state.stat().st_mtime_ns == stamp
    assert (tmp_path / "ckpt" / "checkpoint-4").is_dir()

    changed = cli(*common, "--max-steps", "6", "--resume", "--overwrite", "--lora-r", "4")
    assert changed.exit_code == 2 and "trained with different ['lora_alpha', 'lora_r']" in changed.output


def test_early_stopping_fires_when_validation_loss_turns_up(cli, write_jsonl, tmp_path):
    """A learning rate far too high overfits and diverges: validation loss turns up, training stops early and
    the adapter published is the best checkpoint, not the last one."""
    data = write_jsonl("sft.jsonl", [chat(q, a) for q, a in TINY_QA])
    args = ["train", "sft", "--data", data, "--name", "stopped", "--adapters-dir", tmp_path / "store",
            "--output-dir", tmp_path / "ckpt", "--max-steps", "24", "--eval-steps", "1",
            "--early-stopping-patience", "2", "--learning-rate", "0.05", *FAST]
    result = cli(*args)
    assert result.exit_code == 0, result.output
    metrics = AdapterStore(tmp_path / "store").read_manifest("stopped").metrics
    val = dict(metrics["val_loss"])
    assert metrics["stopped_early"] is True and metrics["steps"] < 24
    assert val[metrics["best_step"]] == min(val.values())
    assert max(val) == metrics["best_step"] + 2, "stopped after `patience` evaluations without improvement"


def test_qlora_nf4_trains_on_cpu(cli, write_jsonl, tmp_path, base_info):
    data = write_jsonl("sft.jsonl", [chat(q, a) for q, a in TINY_QA])
    result = cli(
        "train",
        "sft",
        "--data",
        data,
        "--name",
        "tiny-qlora",
        "--adapters-dir",
        tmp_path / "store",
        "--output-dir",
        tmp_path / "ckpt",
        "--max-steps",
        "1",
        "--quantization",
        "nf4",
        "--val-fraction",
        "0",
        *FAST[:4],
    )
    assert result.exit_code == 0, result.output
    folder = tmp_path / "store" / "tiny-qlora"
    manifest = validate_adapter(folder, base_info)
    assert manifest.provenance.recipe["quantization"] == "nf4"
    assert lora_b_nonzero(folder)


def test_dpo_publishes_a_valid_adapter(cli, write_jsonl, tmp_path, base_info):
    pairs = [pair(q, f"Arr, {a}", a) for q, a in TINY_QA]
    data = write_jsonl("dpo.jsonl", pairs)
    result = cli(
        "train",
        "dpo",
        "--data",
        data,
        "--name",
        "tiny-dpo",
        "--adapters-dir",
        tmp_path / "store",
        "--output-dir",
        tmp_path / "ckpt",
        "--max-steps",
        "2",
        "--eval-steps",
        "1",
        "--beta",
        "0.2",
        *FAST,
    )
    assert result.exit_code == 0, result.output
    folder = tmp_path / "store" / "tiny-dpo"
    manifest = validate_adapter(folder, base_info)
    assert manifest.provenance.method == "dpo" and manifest.provenance.recipe["beta"] == 0.2
    assert manifest.template_sha256 == template_sha256()
    assert len(manifest.metrics["val_loss"]) == 2
    assert "eval_rewards/accuracies" in manifest.metrics["eval"]
    assert lora_b_nonzero(folder)
