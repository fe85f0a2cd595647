"""Data quality for DPO exports: contradictions, agreement per annotator, near-duplicates, parquet export."""

from __future__ import annotations

from pathlib import Path

import pytest

from loradock.core.dpo_files import write_dpo
from loradock.core.feedback import FeedbackStore
from loradock.core.feedback_quality import QualityOptions, assess, near_duplicate_prompts, report_line, select_pairs


def _vote(question: str, winner: str, annotator: str, **kw: object) -> dict:
    short, long = "Paris.", "The capital of France is Paris, a city on the Seine with many museums."
    chosen, rejected = (short, long) if winner == "adapter" else (long, short)
    return {"prompt": [{"role": "user", "content": question}], "chosen": chosen, "rejected": rejected,
            "verdict": "a", "chosen_approach": winner,
            "rejected_approach": "base" if winner == "adapter" else "adapter",
            "chosen_model": "concise" if winner == "adapter" else "SmolLM2", "annotator": annotator,
            "rejected_model": "SmolLM2" if winner == "adapter" else "concise", **kw}


@pytest.fixture
def store(db_url: str) -> FeedbackStore:
    with FeedbackStore(db_url) as s:
        yield s


def test_contradictions_agreement_and_near_duplicates_are_flagged(store: FeedbackStore) -> None:
    q = "What is the capital of France?"
    agreeing = [store.add(_vote(q, "adapter", who)) for who in ("ana", "ana", "bob")]
    odd_one = store.add(_vote(q, "base", "eve"))  # same prompt and pair, the other winner
    clean = store.add(_vote("Why is the sky blue?", "adapter", "ana"))
    near = store.add(_vote("why is the sky BLUE", "adapter", "bob"))

    report = assess(store.pairs())
    assert report.contradictory_groups == 1
    assert {rid for rid, flags in report.flags.items() if "contradictory" in flags} == \
        {r.id for r in [*agreeing, odd_one]}
    # ana's two votes and bob's agree with the rest of their group; eve disagrees with everyone else.
    assert report.agreement["ana"] == {"votes": 3, "repeated": 2, "agreement": 1.0}
    assert report.agreement["eve"]["agreement"] == 0.0 and report.agreement["bob"]["agreement"] == 1.0
    assert report.flags[near.id] == ["near_duplicate"] and report.flags[clean.id] == []
    assert report.near_duplicates == [{"prompt": "why is the sky BLUE", "repeats": "Why is the sky blue?"}]

    rows, summary = select_pairs(store.pairs())  # default: contradictions dropped, near-duplicates kept
    assert summary["dropped"] == {"contradictory": 4, "near_duplicate": 0, "low_agreement": 0}
    assert summary["kept_flagged"]["near_duplicate"] == 1 and len(rows) == 2
    assert report_line(summary) == \
        "2 of 6 pairs written; dropped: 4 contradictory; kept although flagged: 1 near-duplicate"

    rows, summary = select_pairs(store.pairs(), QualityOptions(drop_contradictory=False, min_agreement=0.5))
    assert summary["dropped"]["low_agreement"] == 1  # eve
    assert summary["duplicates_merged"] == 2  # ana twice and bob: one row for the three identical pairs
    assert len(rows) == 3


def test_short_prompts_that_differ_in_a_word_are_not_duplicates() -> None:
    found = near_duplicate_prompts(["What is 2+2?", "What is 2+3?", "what is 2 + 2",
                                    "Please explain in simple words how a rainbow forms in the sky",
                                    "Please explain in simple words how a rainbow form in the sky",
                                    "Please explain in simple words how a volcano forms in the sky"])
    assert found == {"what is 2 + 2": "What is 2+2?",
                     "Please explain in simple words how a rainbow form in the sky":
                         "Please explain in simple words how a rainbow forms in the sky"}


def test_parquet_export_is_a_datasets_folder(store: FeedbackStore, tmp_path: Path) -> None:
    from datasets import load_dataset

    store.add(_vote("Why is the sky blue?", "adapter", "ana"))
    rows, _ = select_pairs(store.pairs())
    folder = write_dpo(rows, tmp_path / "prefs", "hf-parquet")
    ds = load_dataset(str(folder), split="train")
    assert ds.num_rows == 1 and set(ds.column_names) == {"prompt", "chosen", "rejected"}
    assert ds[0]["chosen"] == [{"role": "assistant", "content": "Paris."}]
    assert ds[0]["prompt"] == [{"role": "user", "content": "Why is the sky blue?"}]
    with pytest.raises(ValueError, match="no pairs to write"):  # datasets cannot read a rowless parquet file
        write_dpo([], tmp_path / "empty", "hf-parquet")
