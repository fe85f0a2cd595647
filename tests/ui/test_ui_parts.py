"""UI logic that needs no browser: comparison plan, vote records, tables."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from loradock.core.feedback import FeedbackStore
from loradock.ui.adapters_tab import models_frame
from loradock.ui.compare_tab import MAX_ADAPTER_COLUMNS, passages_markdown, plan_sides, preference
from loradock.ui.data_tab import records_frame, win_rate_frame

BASE = "SmolLM2-135M-Instruct"


def _side(label: str, approach: str, model: str, text: str) -> dict:
    return {"label": label, "approach": approach, "model": model, "text": text, "system": None,
            "passages": None, "latency_s": 1.0, "completion_tokens": 5}


def test_plan_sides_prompting_rag_and_capped_adapters() -> None:
    sides = plan_sides("Q?", " Be brief. ", BASE, ["a1", "a2", "a3", "a4"], "faq", 3)
    assert [s.label for s in sides] == ["Prompting", "RAG", "Adapter: a1", "Adapter: a2", "Adapter: a3"]
    assert len([s for s in sides if s.approach == "adapter"]) == MAX_ADAPTER_COLUMNS
    prompting, rag, adapter = sides[0], sides[1], sides[2]
    assert prompting.messages == [{"role": "system", "content": "Be brief."},
                                  {"role": "user", "content": "Q?"}]
    assert rag.model == BASE and rag.rag == {"collection": "faq", "top_k": 3}
    assert rag.messages == adapter.messages == [{"role": "user", "content": "Q?"}]
    assert adapter.model == "a1" and adapter.rag is None
    assert [s.label for s in plan_sides("Q?", "", BASE, [], "", 4)] == ["Prompting"]  # no collection: no RAG


def test_vote_b_makes_side_b_the_chosen_answer() -> None:
    a = _side("Prompting", "prompting", BASE, "No idea.")
    b = _side("Adapter: faq", "adapter", "faq", "Two years.")
    rec = preference("b", a, b, "Warranty?", " ana ")
    assert (rec.chosen, rec.rejected) == ("Two years.", "No idea.")
    assert (rec.chosen_approach, rec.chosen_model, rec.rejected_approach) == ("adapter", "faq", "prompting")
    assert rec.annotator == "ana" and rec.meta["a"] == "Prompting" and rec.meta["b"] == "Adapter: faq"
    tie = preference("tie", a, b, "Warranty?", None)
    assert (tie.chosen, tie.verdict, tie.annotator) == ("No idea.", "tie", None)
    with pytest.raises(ValidationError, match="identical"):
        preference("a", a, {**b, "text": "No idea."}, "Warranty?", None)


def test_passages_are_numbered_with_source_and_score() -> None:
    md = passages_markdown([{"source": "warranty.md", "chunk": 0, "score": 0.7684, "text": "Two\nyears."},
                            {"source": "faq.pdf", "chunk": 3, "score": 0.5, "text": "x" * 500}])
    lines = md.splitlines()
    assert lines[1] == "1. `warranty.md` #0 · score 0.768: Two years."
    assert lines[2].startswith("2. `faq.pdf` #3") and lines[2].endswith("...")
    assert passages_markdown(None) == ""


def test_models_table_flags_template_mismatch() -> None:
    frame = models_frame([
        {"id": BASE, "parent": None, "loaded": True, "template_sha256": "a" * 64},
        {"id": "good", "parent": BASE, "loaded": True, "rank": 8, "template_sha256": "a" * 64, "created": 0},
        {"id": "drift", "parent": BASE, "loaded": False, "rank": 8, "template_sha256": "b" * 64},
    ])
    rows = {r["id"]: r for r in frame.to_dict("records")}
    assert rows[BASE]["parent"] == "(base)"
    assert rows["good"]["template"].endswith(" ok") and rows["drift"]["template"].endswith("MISMATCH")
    assert rows["drift"]["loaded"] == "no"
    unloaded = models_frame([{"id": BASE, "parent": None}], in_store=["gone"]).to_dict("records")[1]
    assert (unloaded["id"], unloaded["parent"], unloaded["loaded"]) == ("gone", "(store)", "not served")


def _store_with_votes(url: str) -> tuple[str, FeedbackStore]:
    store = FeedbackStore(url)
    a = _side("Prompting", "prompting", BASE, "No idea.")
    b = _side("Adapter: faq", "adapter", "faq", "Two years.")
    for verdict in ("a", "b", "tie", "both_bad"):
        store.add(preference(verdict, a, b, "Warranty?", "ana"))
    return url, store


def test_data_tables(db_url: str) -> None:
    _, store = _store_with_votes(db_url)
    frame = records_frame(store.list())
    assert list(frame["verdict"]) == ["both_bad", "tie", "b", "a"]
    assert frame.iloc[2]["chosen side"] == "adapter: faq"
    rates = win_rate_frame(store.stats()["per_approach"]).set_index("name")
    assert rates.loc["adapter", "games"] == 4 and rates.loc["adapter", "win_rate"] == pytest.approx(0.375)


def test_win_rate_frame_is_numeric_even_when_empty() -> None:
    # An object-typed column makes Gradio plot win rates as categories.
    frame = win_rate_frame({})
    assert frame.empty and str(frame["win_rate"].dtype) == "float64" and str(frame["games"].dtype) == "int64"


def test_build_ui_has_the_four_tabs(tmp_path: Path) -> None:
    import gradio as gr

    from loradock.ui.app import build_ui

    demo = build_ui("http://127.0.0.1:9", None, None, f"sqlite:///{tmp_path}/ui.db")
    labels = [b.label for b in demo.blocks.values() if isinstance(b, gr.Tab)]
    assert labels == ["Chat", "Compare", "Data", "Adapters"]
