"""`loradock data check` finds each kind of defect, by line, in JSONL, CSV and saved HF datasets."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from loradock.train.data import DataError, check_rows, read_records, usable_rows
from loradock.train.masking import count_tokens
from tests.train.helpers import chat, pair

LONG = " ".join(["word"] * 80)


def check(path: Path, tokenizer, method: str = "sft", max_length: int = 64):
    return check_rows(read_records(path), method, count_tokens(tokenizer), max_length, path)


def kinds_by_line(report) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for p in report.problems:
        out.setdefault(p.line, set()).add(p.kind)
    return out


def test_each_sft_defect_is_found_by_line(write_jsonl, tokenizer):
    path = write_jsonl(
        "bad.jsonl",
        [
            chat("Hi", "Hello!"),  # 1 ok
            chat("Hi", "Hello!"),  # 2 duplicate of 1
            chat("Capital of France?", "Paris."),  # 3 contradicts 4
            chat("Capital of France?", "Lyon."),  # 4
            chat("   ", "Hm."),  # 5 empty user turn
            {"prompt": "Tell me a story", "completion": "\t"},  # 6 empty completion
            {"prompt": "Say a lot", "completion": LONG},  # 7 too long
            "{not json",  # 8 schema
            {"messages": [{"role": "robot", "content": "x"}]},  # 9 schema (role)
            {"text": "no known columns"},  # 10 schema
            {"messages": [{"role": "user", "content": "a question only"}]},  # 11 schema (no answer)
            {"prompt": "fine", "completion": "A normal answer."},  # 12 ok
        ],
    )
    report = check(path, tokenizer)
    assert kinds_by_line(report) == {
        2: {"duplicate"},
        3: {"contradiction"},
        4: {"contradiction"},
        5: {"empty"},
        6: {"empty"},
        7: {"too_long"},
        8: {"schema"},
        9: {"schema"},
        10: {"schema"},
        11: {"schema"},
    }
    assert report.counts() == {"schema": 4, "empty": 2, "duplicate": 1, "contradiction": 2, "too_long": 1}
    assert [r.line for r in report.clean_rows()] == [1, 12]
    messages = {p.line: p.message for p in report.problems}
    assert "duplicate of line 1" in messages[2]
    assert "line(s) 4" in messages[3]
    assert "max_length 64" in messages[7]


def test_preference_defects(write_jsonl, tokenizer):
    path = write_jsonl(
        "pairs.jsonl",
        [
            pair("Q1", "good", "bad"),  # 1 contradicts 2
            pair("Q1", "bad", "good"),  # 2
            pair("Q2", "same", "same"),  # 3 chosen == rejected
            {"prompt": "Q3", "chosen": "ok"},  # 4 missing rejected
            {"prompt": [{"role": "user", "content": "Q4"}], "chosen": [], "rejected": "x"},  # 5 empty chosen list
            pair("Q5", "fine", "worse"),  # 6 ok
        ],
    )
    report = check(path, tokenizer, method="dpo")
    assert kinds_by_line(report) == {
        1: {"contradiction"},
        2: {"contradiction"},
        3: {"contradiction"},
        4: {"schema"},
        5: {"schema"},
    }
    assert [r.line for r in report.clean_rows()] == [6]


def test_training_refuses_failing_data_unless_drop_invalid(write_jsonl, tokenizer):
    path = write_jsonl("mixed.jsonl", [chat("a", "b"), chat("a", "b"), chat("c", " ")])
    report = check(path, tokenizer)
    with pytest.raises(DataError, match="--drop-invalid"):
        usable_rows(report, drop_invalid=False)
    rows, counts = usable_rows(report, drop_invalid=True)
    assert [r.line for r in rows] == [1]
    assert counts["duplicate"] == 1 and counts["empty"] == 1


def test_csv_and_saved_dataset_are_read(tmp_path: Path, tokenizer):
    csv_path = tmp_path / "rows.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["prompt", "completion"])
        writer.writeheader()
        writer.writerow({"prompt": "Capital of Peru?", "completion": "Lima."})
        writer.writerow({"prompt": "Capital of Peru?", "completion": "Cusco."})
        writer.writerow({"prompt": "", "completion": "Empty prompt."})
    report = check(csv_path, tokenizer)
    assert kinds_by_line(report) == {2: {"contradiction"}, 3: {"contradiction"}, 4: {"empty"}}

    import datasets

    ds = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list([chat("x", "y"), chat("x", "y")]),
            "validation": datasets.Dataset.from_list([chat("v", "w")]),
        }
    )
    ds.save_to_disk(str(tmp_path / "hf"))
    report = check(tmp_path / "hf", tokenizer)
    assert kinds_by_line(report) == {2: {"duplicate"}}


def test_cli_prints_summary_and_exits_1(write_jsonl, cli):
    bad = write_jsonl("bad.jsonl", [chat("Hi", "Hello!"), chat("Hi", "Hello!"), "oops"])
    result = cli("data", "check", str(bad), "--max-length", "64")
    assert result.exit_code == 1
    assert "exact duplicates" in result.output and "duplicate of line 1" in result.output
    assert "not valid JSON" in result.output
    good = write_jsonl("good.jsonl", [chat("Hi", "Hello!"), chat("Bye", "Goodbye!")])
    result = cli("data", "check", str(good))
    assert result.exit_code == 0, result.output
    assert "ok" in result.output and "rows passing every check" in result.output


def test_demo_datasets_pass_the_check(cli):
    """The data the demo adapters are trained on must itself pass the guard rails."""
    repo = Path(__file__).resolve().parents[2]
    recipes = {
        "json_answer_train": "json-answer",
        "pirate_train": "pirate",
        "faq_train": "zephyr-faq",
        "new_fact": "new-fact",
        "concise_dpo_train": "concise",
    }
    for name, recipe in recipes.items():
        result = cli("data", "check", str(repo / "data" / f"{name}.jsonl"), "--recipe", recipe)
        assert result.exit_code == 0, f"{name}: {result.output}"
    rows = [json.loads(line) for line in (repo / "data" / "general_questions.jsonl").read_text().splitlines()]
    assert len(rows) >= 10 and all(r["expected"] for r in rows)
