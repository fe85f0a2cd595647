"""`loradock data export`: votes in the preference database become TRL DPO rows; ties and both-bad stay out."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from loradock.cli import app
from loradock.core.feedback import FeedbackStore, PreferenceIn


def _vote(verdict: str) -> PreferenceIn:
    a, b = "No idea.", "Two years."
    chosen, rejected = (b, a) if verdict == "b" else (a, b)
    return PreferenceIn(prompt=[{"role": "user", "content": "Warranty?"}], chosen=chosen, rejected=rejected,
                        chosen_model="SmolLM2-135M-Instruct" if chosen == a else "faq",
                        rejected_model="faq" if chosen == a else "SmolLM2-135M-Instruct",
                        chosen_approach="prompting" if chosen == a else "adapter",
                        rejected_approach="adapter" if chosen == a else "prompting", verdict=verdict, annotator="ana")


def test_data_export_command_writes_only_pairs(tmp_path: Path, db_url: str) -> None:
    url = db_url
    with FeedbackStore(url) as store:
        for verdict in ("a", "b", "tie", "both_bad"):
            store.add(_vote(verdict))
    out = tmp_path / "pairs.jsonl"
    result = CliRunner().invoke(app, ["data", "export", "--format", "dpo-jsonl", "--out", str(out), "--db-url", url])
    assert result.exit_code == 0, result.output
    # "a" and "b" on the same prompt and pair name opposite winners: contradictory, dropped by default.
    assert "wrote 0 pairs" in result.output and "dropped: 2 contradictory" in result.output
    result = CliRunner().invoke(app, ["data", "export", "--out", str(out), "--db-url", url, "--keep-contradictory"])
    assert "wrote 2 pairs" in result.output and "kept although flagged: 2 contradictory" in result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["chosen"][0]["content"] for r in rows] == ["No idea.", "Two years."]
    assert rows[0]["prompt"] == [{"role": "user", "content": "Warranty?"}]
    bad = CliRunner().invoke(app, ["data", "export", "--format", "csv", "--out", str(out), "--db-url", url])
    assert bad.exit_code != 0


def test_data_export_writes_a_parquet_datasets_folder(tmp_path: Path, db_url: str) -> None:
    from datasets import load_dataset

    with FeedbackStore(db_url) as store:
        store.add(_vote("b"))
        store.add(_vote("tie"))
    out = tmp_path / "prefs"
    result = CliRunner().invoke(app, ["data", "export", "--format", "hf-parquet", "--out", str(out),
                                      "--db-url", db_url, "--annotator", "ana"])
    assert result.exit_code == 0, result.output
    assert "wrote 1 pairs" in result.output and "(hf-parquet)" in result.output
    ds = load_dataset(str(out), split="train")
    assert ds.num_rows == 1 and ds[0]["chosen"] == [{"role": "assistant", "content": "Two years."}]
    empty = CliRunner().invoke(app, ["data", "export", "--format", "hf-parquet", "--out", str(tmp_path / "none"),
                                     "--db-url", db_url, "--annotator", "nobody"])
    assert empty.exit_code != 0 and "no pairs to write" in empty.output


def test_train_from_votes_refuses_when_no_pairs_match(tmp_path: Path, db_url: str) -> None:
    with FeedbackStore(db_url) as store:
        store.add(_vote("tie"))
    progress = tmp_path / "progress.jsonl"
    result = CliRunner().invoke(app, ["train", "dpo", "--from-votes", "--db-url", db_url, "--name", "nothing",
                                      "--adapters-dir", str(tmp_path / "store"), "--progress-file", str(progress)])
    assert result.exit_code == 2 and "no preference pairs match" in result.output
    events = [json.loads(line)["event"] for line in progress.read_text().splitlines()]
    assert events == ["export", "error"]
    assert not (tmp_path / "store" / "nothing").exists()
