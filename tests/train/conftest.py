"""Fixtures for the training tests: the real base tokenizer, tiny datasets, and a CLI runner."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]
BASE_MODEL = REPO / "models" / "SmolLM2-135M-Instruct"


@pytest.fixture(scope="session")
def tokenizer():
    from loradock.train.common import load_tokenizer

    return load_tokenizer(BASE_MODEL)


@pytest.fixture()
def write_jsonl(tmp_path: Path) -> Callable[[str, list], Path]:
    """Write rows (dicts, or raw strings for broken lines) as a JSONL file in tmp_path."""

    def _write(name: str, rows: list) -> Path:
        path = tmp_path / name
        lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    return _write


@pytest.fixture()
def cli() -> Callable[..., object]:
    """Invoke the real `loradock` CLI in-process; wide output so tables do not wrap."""
    from loradock.cli import app

    runner = CliRunner()

    def _invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "240"}, catch_exceptions=False)

    return _invoke
