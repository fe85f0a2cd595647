"""Two data-parallel training processes on CPU (accelerate's torchrun launcher, gloo): the same steps as one
process at twice the batch, one publish (rank 0), the world size in the manifest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from loradock.core.store import TMP_PREFIX, AdapterStore
from loradock.core.validate import validate_adapter
from tests.conftest import REPO

pytestmark = pytest.mark.train
CPU_2PROC = REPO / "train" / "recipes" / "accelerate" / "cpu_2proc.yaml"
STEPS = 4


def _args(data: Path, name: str, store: Path, out: Path, batch_size: int) -> list[str]:
    return ["train", "sft", "--data", str(data), "--name", name, "--adapters-dir", str(store), "--output-dir",
            str(out), "--max-steps", str(STEPS), "--eval-steps", "2", "--learning-rate", "1e-3", "--max-length", "96",
            "--val-fraction", "0.25", "--logging-steps", "1", "--batch-size", str(batch_size)]


def test_two_processes_train_like_one_and_publish_once(tmp_path: Path, base_info) -> None:
    data = tmp_path / "sft.jsonl"
    data.write_text("".join((REPO / "data" / "json_answer_train.jsonl").read_text().splitlines(True)[:16]))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

    # One process, 4 rows a step.
    one = subprocess.run([sys.executable, "-m", "loradock", *_args(data, "one", tmp_path / "s1", tmp_path / "c1", 4)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    # Two processes, 2 rows each a step: the same 4-row steps.
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_2PROC), "-m", "loradock"]
    two = subprocess.run([*launch, *_args(data, "two", tmp_path / "s2", tmp_path / "c2", 2)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    output = two.stdout + two.stderr
    assert two.returncode == 0, output[-3000:]

    assert "rank 1 of 2: rank 0 publishes two" in output
    assert output.count("loradock.core.store: published adapter two") == 1, "exactly one rank publishes"
    store = AdapterStore(tmp_path / "s2")
    assert store.names() == ["two"] and not list(store.root.glob(f"{TMP_PREFIX}*")), "no half-written copy"
    manifest = validate_adapter(store.path("two"), base_info)
    single = AdapterStore(tmp_path / "s1").read_manifest("one")
    assert manifest.provenance.world_size == 2 and single.provenance.world_size == 1

    m1, m2 = single.metrics, manifest.metrics
    print(f"\n1 process: train {m1['train_loss']}, val {m1['val_loss']}; 2 processes: train {m2['train_loss']}, "
          f"val {m2['val_loss']}")
    assert m1["steps"] == m2["steps"] == STEPS and m1["train_rows"] == m2["train_rows"] == 12
    # Step 1 starts from the same weights on the same 4 rows: the same loss, so the ranks split one batch.
    assert m2["train_loss"][0][1] == pytest.approx(m1["train_loss"][0][1], abs=1e-3)
    # As good as one process: validation loss fell as far (same held-out rows, seeded split).
    first_val = dict(m1["val_loss"])[2]
    losses = f"validation loss: 1 process {m1['val_loss']}, 2 processes {m2['val_loss']}"
    assert m2["eval"]["eval_loss"] < first_val and m1["eval"]["eval_loss"] < first_val, losses
    assert m2["eval"]["eval_loss"] == pytest.approx(m1["eval"]["eval_loss"], rel=0.05), losses
