"""Preference records: durability settings, validation, stats, and a DPO-ready export (one real DPO step)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import text

from loradock.core.feedback import FeedbackStore
from loradock.core.template import template_sha256, template_source

BASE_MODEL = Path(__file__).resolve().parents[2] / "models" / "SmolLM2-135M-Instruct"


def _vote(verdict: str, i: int = 0, **kw: object) -> dict:
    return {"prompt": [{"role": "system", "content": "Be brief."},
                       {"role": "user", "content": f"How long is the Zephyr-9 warranty? ({i})"}],
            "chosen": f"Two years. ({i})", "rejected": f"I do not know. ({i})", "verdict": verdict,
            "chosen_approach": "adapter", "chosen_model": "faq-sft",
            "rejected_approach": "prompting", "rejected_model": "SmolLM2-135M-Instruct", **kw}


@pytest.fixture
def store(db_url: str) -> FeedbackStore:
    """The store on SQLite and on a real PostgreSQL server (tests/conftest.py's db_url)."""
    with FeedbackStore(db_url) as s:
        yield s


@pytest.fixture
def sqlite_store(tmp_path: Path) -> FeedbackStore:
    with FeedbackStore(f"sqlite:///{tmp_path}/nested/dir/loradock.db") as s:
        yield s


def test_sqlite_runs_in_wal_mode_with_full_sync(sqlite_store: FeedbackStore, tmp_path: Path) -> None:
    store = sqlite_store
    db = tmp_path / "nested" / "dir" / "loradock.db"
    assert db.is_file(), "the parent folders of a SQLite file are created"
    with store.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
    with sqlite3.connect(db) as raw:  # WAL is a property of the file, seen by any other process
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_add_list_filter_delete(store: FeedbackStore) -> None:
    a = store.add(_vote("a", 1, annotator="ana"))
    store.add(_vote("tie", 2, chosen_approach="rag", chosen_model="base"))
    store.add(_vote("both_bad", 3))
    assert a.id.startswith("fb-") and a.template_sha256 == template_sha256()
    assert a.created.tzinfo is not None

    assert [r.verdict for r in store.list()] == ["both_bad", "tie", "a"]  # newest first
    assert [r.id for r in store.list(annotator="ana")] == [a.id]
    assert [r.verdict for r in store.list(approach="rag")] == ["tie"]
    assert [r.verdict for r in store.list(verdict="tie")] == ["tie"]
    assert len(store.list(model="faq-sft")) == 2
    assert len(store.list(text="ZEPHYR-9 warranty? (3)")) == 1
    assert store.get(a.id).prompt[0] == {"role": "system", "content": "Be brief."}

    assert store.delete(a.id) is True
    assert store.delete(a.id) is False
    assert store.get(a.id) is None and store.count() == 2


@pytest.mark.parametrize(("change", "message"), [
    ({"prompt": []}, "at least 1"),
    ({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
     "end with a user"),
    ({"prompt": [{"role": "robot", "content": "q"}]}, "role must be one of"),
    ({"rejected": "Two years. (0)"}, "identical"),
    ({"chosen": "  "}, "chosen is empty"),
    ({"verdict": "maybe"}, "verdict"),
    ({"chosen_approach": "magic"}, "chosen_approach"),
])
def test_bad_records_are_refused_with_a_reason(store: FeedbackStore, change: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        store.add({**_vote("a"), **change})
    assert store.count() == 0


def test_identical_answers_are_fine_for_a_tie(store: FeedbackStore) -> None:
    assert store.add(_vote("tie", rejected="Two years. (0)")).verdict == "tie"


def test_stats_win_rates_per_approach_and_adapter(store: FeedbackStore) -> None:
    store.add(_vote("a", 1))
    store.add(_vote("b", 2))
    store.add(_vote("tie", 3))
    store.add(_vote("both_bad", 4, chosen_model="other-adapter"))
    s = store.stats()
    assert s["total"] == 4 and s["pairs"] == 2
    assert s["verdicts"] == {"a": 1, "b": 1, "tie": 1, "both_bad": 1}
    adapter = s["per_approach"]["adapter"]
    assert (adapter["games"], adapter["wins"], adapter["ties"], adapter["both_bad"]) == (4, 2, 1, 1)
    assert adapter["win_rate"] == pytest.approx((2 + 0.5) / 4)
    assert s["per_approach"]["prompting"]["win_rate"] == pytest.approx(0.5 / 4)
    assert s["per_adapter"]["faq-sft"]["games"] == 3 and "other-adapter" in s["per_adapter"]


def _export_three_pairs(store: FeedbackStore, path: Path) -> int:
    for i, verdict in enumerate(["a", "tie", "b", "both_bad", "a"]):
        store.add(_vote(verdict, i))
    return store.export_dpo_jsonl(path)


def test_export_writes_only_real_pairs_in_trl_conversational_shape(store: FeedbackStore,
                                                                    tmp_path: Path) -> None:
    out = tmp_path / "export" / "pairs.jsonl"
    assert _export_three_pairs(store, out) == 3
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3
    assert [r["chosen"][0]["content"] for r in rows] == ["Two years. (0)", "Two years. (2)", "Two years. (4)"]
    assert rows[0] == {"prompt": _vote("a", 0)["prompt"],
                       "chosen": [{"role": "assistant", "content": "Two years. (0)"}],
                       "rejected": [{"role": "assistant", "content": "I do not know. (0)"}]}
    assert store.export_dpo_jsonl(out, model="nobody") == 0 and out.read_text() == ""


def test_an_acknowledged_record_survives_a_killed_process(db_url: str) -> None:
    url = db_url
    code = ("import os, signal, sys\nfrom loradock.core.feedback import FeedbackStore\n"
            f"s = FeedbackStore({url!r})\nr = s.add({_vote('a', 7)!r})\n"
            "print(r.id, flush=True)\nos.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    record_id = proc.stdout.strip()
    with FeedbackStore(url) as store:
        record = store.get(record_id)
    assert record is not None and record.chosen == "Two years. (7)"


def test_export_loads_with_datasets(store: FeedbackStore, tmp_path: Path) -> None:
    from datasets import load_dataset

    path = tmp_path / "pairs.jsonl"
    _export_three_pairs(store, path)
    ds = load_dataset("json", data_files=str(path), split="train")
    assert ds.num_rows == 3 and set(ds.column_names) == {"prompt", "chosen", "rejected"}
    assert ds[0]["chosen"] == [{"role": "assistant", "content": "Two years. (0)"}]


@pytest.mark.train
def test_one_dpo_step_trains_on_the_export(sqlite_store: FeedbackStore, tmp_path: Path) -> None:
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    path = tmp_path / "pairs.jsonl"
    _export_three_pairs(sqlite_store, path)  # the export itself runs on both databases above
    ds = load_dataset("json", data_files=str(path), split="train")

    tokenizer = AutoTokenizer.from_pretrained(BASE_MODEL)
    tokenizer.chat_template = template_source()
    model = AutoModelForCausalLM.from_pretrained(BASE_MODEL, dtype=torch.float32)
    args = DPOConfig(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=2,
                     max_length=96, learning_rate=1e-3, report_to="none", use_cpu=True, save_strategy="no",
                     logging_steps=1, dataset_num_proc=None, seed=0)
    trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer,
                         peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                task_type="CAUSAL_LM"))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    result = trainer.train()

    assert result.global_step == 1
    assert torch.isfinite(torch.tensor(result.training_loss))
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(before[n], after[n].detach()) for n in before), "the LoRA weights must move"


def test_an_older_database_gains_the_new_columns(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as raw:  # the table as loradock 0.1 made it, with one vote in it
        raw.execute("CREATE TABLE preference (id VARCHAR(40) PRIMARY KEY, created DATETIME, prompt JSON, "
                    "chosen TEXT, rejected TEXT, verdict VARCHAR(16), chosen_model VARCHAR(128), "
                    "rejected_model VARCHAR(128), chosen_approach VARCHAR(16), rejected_approach VARCHAR(16), "
                    "template_sha256 VARCHAR(64), annotator VARCHAR(128), meta JSON)")
        raw.execute("INSERT INTO preference VALUES ('fb-old', '2026-11-01 10:00:00', "
                    "'[{\"role\": \"user\", \"content\": \"q\"}]', 'x', 'y', 'a', 'm', 'n', 'adapter', 'base', "
                    f"'{template_sha256()}', NULL, '{{}}')")
    with FeedbackStore(f"sqlite:///{db}") as store:
        old = store.get("fb-old")
        assert old is not None and old.blind is False and old.prompt_set is None
        new = store.add(_vote("a", 1, blind=True, prompt_set="demo", shown_order=["Base", "Adapter: x"]))
        assert [r.id for r in store.list(blind=True)] == [new.id]
        assert [r.id for r in store.list(blind=False)] == ["fb-old"]


def test_filters_by_prompt_set_date_and_blindness(store: FeedbackStore) -> None:
    from datetime import UTC, datetime, timedelta

    from loradock.core.feedback import FeedbackFilter

    blind = store.add(_vote("a", 1, blind=True, prompt_set="capitals", chosen_version="2"))
    named = store.add(_vote("b", 2))
    assert store.get(blind.id).chosen_version == "2" and store.get(blind.id).blind is True
    assert [r.id for r in store.list(FeedbackFilter(prompt_set="capitals"))] == [blind.id]
    assert [r.id for r in store.list(FeedbackFilter(blind=False))] == [named.id]
    now = datetime.now(UTC)
    assert len(store.list(FeedbackFilter(since=now - timedelta(minutes=5)))) == 2
    assert store.list(FeedbackFilter(until=now - timedelta(minutes=5))) == []
    assert store.count(FeedbackFilter(blind=True)) == 1
    assert store.stats(FeedbackFilter(prompt_set="capitals"))["total"] == 1


@pytest.mark.parametrize(("change", "message"), [
    ({"chosen": "x" * 16_001}, "at most 16000"),
    ({"prompt": [{"role": "user", "content": "q" * 32_001}]}, "longer than 32000"),
    ({"prompt": [{"role": "user", "content": "q"}] * 65}, "at most 64"),
    ({"meta": {"blob": "x" * 20_000}}, "meta is larger than"),
    ({"shown_order": ["only one"]}, "at least 2"),
])
def test_records_are_size_capped(store: FeedbackStore, change: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        store.add({**_vote("a"), **change})


def test_stats_are_grouped_in_sql_not_read_row_by_row(store: FeedbackStore) -> None:
    from sqlalchemy import event

    for i in range(30):
        store.add(_vote(("a", "b", "tie")[i % 3], i))
    statements: list[str] = []
    event.listen(store.engine, "before_cursor_execute",
                 lambda _c, _cur, sql, *_: statements.append(" ".join(sql.split())))
    stats = store.stats()
    assert stats["total"] == 30 and stats["per_approach"]["adapter"]["games"] == 30
    assert len(statements) == 3 and all("GROUP BY" in s and "count(*)" in s for s in statements), statements
