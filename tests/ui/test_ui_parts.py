"""UI logic that needs no browser: comparison plan, arena rounds and vote records, tables, training jobs,
the CLI's refusal to expose the UI without a login."""

from __future__ import annotations

import random

import pytest
from typer.testing import CliRunner

from loradock.core.feedback import FeedbackStore, PreferenceIn
from loradock.core.plots import loss_figure
from loradock.ui.adapters_tab import curves, models_frame
from loradock.ui.arena import arena_record, contender, contender_labels, draw_pair, reveal
from loradock.ui.cli import is_loopback, parse_auth
from loradock.ui.compare_tab import MAX_ADAPTER_COLUMNS, passages_markdown, plan_sides, preference
from loradock.ui.data_tab import filters, records_frame, win_rate_frame
from loradock.ui.leaderboard_tab import clean_filters, pairs_frame, ratings_frame
from loradock.ui.train_job import _filter_flags
from loradock.ui.train_panel import loss_curves, publish_name

BASE = "SmolLM2-135M-Instruct"
LISTING = [{"id": BASE, "parent": None}, {"id": "concise", "parent": BASE, "version": 3},
           {"id": "pirate", "parent": BASE}]


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
    assert [s.label for s in plan_sides("Q?", "", BASE, [], "", 4)] == ["Prompting"]  # no collection: no RAG


def test_named_vote_b_makes_side_b_the_chosen_answer() -> None:
    a = _side("Prompting", "prompting", BASE, "No idea.")
    b = _side("Adapter: faq", "adapter", "faq", "Two years.")
    rec = PreferenceIn.model_validate(preference("b", a, b, "Warranty?", " ana "))
    assert (rec.chosen, rec.rejected) == ("Two years.", "No idea.")
    assert (rec.chosen_approach, rec.chosen_model, rec.rejected_approach) == ("adapter", "faq", "prompting")
    assert rec.annotator == "ana" and rec.blind is False and rec.shown_order == ["Prompting", "Adapter: faq"]
    tie = PreferenceIn.model_validate(preference("tie", a, b, "Warranty?", None))
    assert (tie.chosen, tie.verdict, tie.annotator) == ("No idea.", "tie", None)


def test_arena_draws_two_contenders_in_random_order() -> None:
    labels = contender_labels(LISTING, "faq")
    assert labels == ["Base", "Prompting", "RAG", "Adapter: concise", "Adapter: pirate"]
    assert "RAG" not in contender_labels(LISTING, "")
    draws = {draw_pair(["Base", "Adapter: concise"], random.Random(seed)) for seed in range(20)}
    assert draws == {("Base", "Adapter: concise"), ("Adapter: concise", "Base")}, "both sides, at random"
    with pytest.raises(ValueError, match="at least two"):
        draw_pair(["Base", "Base"], random.Random(0))
    side = contender("Adapter: concise", BASE, "", "", 4, {"concise": "3"})
    assert (side.approach, side.model, side.version, side.messages) == ("adapter", "concise", "3", [])
    assert contender("Prompting", BASE, "Be brief.", "", 4, {}).messages == [{"role": "system",
                                                                             "content": "Be brief."}]


def test_a_multi_turn_arena_vote_keeps_the_winners_conversation() -> None:
    sides = [{"label": "Base", "approach": "base", "model": BASE, "system": [], "rag": None, "version": None},
             {"label": "Adapter: concise", "approach": "adapter", "model": "concise", "system": [], "rag": None,
              "version": "3"}]
    histories = [[{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris is "
                  "the capital of France and a large city."}, {"role": "user", "content": "And of Spain?"},
                  {"role": "assistant", "content": "Madrid is the capital of Spain, in the centre."}],
                 [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."},
                  {"role": "user", "content": "And of Spain?"}, {"role": "assistant", "content": "Madrid."}]]
    state = {"sides": sides, "histories": histories, "turns": 2, "voted": False}
    body = arena_record("b", state, " ana ", "capitals")
    rec = PreferenceIn.model_validate(body)
    assert rec.prompt == histories[1][:-1] and (rec.chosen, rec.rejected) == ("Madrid.", histories[0][-1]["content"])
    assert (rec.chosen_model, rec.chosen_version, rec.rejected_approach) == ("concise", "3", "base")
    assert rec.blind is True and rec.shown_order == ["Base", "Adapter: concise"] and rec.prompt_set == "capitals"
    assert rec.meta["turns"] == 2 and rec.meta["rejected_history"] == histories[0][:-1]
    assert "A was **Base**" in reveal(state) and "B was **Adapter: concise** (version 3)" in reveal(state)


def test_passages_are_numbered_with_source_and_score() -> None:
    md = passages_markdown([{"source": "warranty.md", "chunk": 0, "score": 0.7684, "text": "Two\nyears."},
                            {"source": "faq.pdf", "chunk": 3, "score": 0.5, "text": "x" * 500}])
    lines = md.splitlines()
    assert lines[1] == "1. `warranty.md` #0 · score 0.768: Two years."
    assert lines[2].startswith("2. `faq.pdf` #3") and lines[2].endswith("...")
    assert passages_markdown(None) == ""


def test_models_table_flags_template_mismatch_and_shows_versions() -> None:
    frame = models_frame([
        {"id": BASE, "parent": None, "loaded": True, "template_sha256": "a" * 64},
        {"id": "good", "parent": BASE, "loaded": True, "rank": 8, "template_sha256": "a" * 64, "created": 0,
         "version": 2},
        {"id": "drift", "parent": BASE, "loaded": False, "rank": 8, "template_sha256": "b" * 64},
    ])
    rows = {r["id"]: r for r in frame.to_dict("records")}
    assert rows[BASE]["parent"] == "(base)" and rows["good"]["version"] == 2
    assert rows["good"]["template"].endswith(" ok") and rows["drift"]["template"].endswith("MISMATCH")
    unloaded = models_frame([{"id": BASE, "parent": None}], seen=["gone"]).to_dict("records")[1]
    assert (unloaded["id"], unloaded["parent"], unloaded["loaded"]) == ("gone", "(store)", "not served")
    figure = loss_figure(curves({"metrics": {"train_loss": [[1, 0.7], [2, 0.5]], "val_loss": [[2, 0.6]]}}), "x")
    lines = figure.axes[0].lines
    assert [ln.get_label() for ln in lines] == ["train", "validation"] and list(lines[0].get_ydata()) == [0.7, 0.5]


def test_data_tables_from_the_servers_json(db_url: str) -> None:
    with FeedbackStore(db_url) as store:
        a = _side("Prompting", "prompting", BASE, "No idea.")
        b = _side("Adapter: faq", "adapter", "faq", "Two years.")
        for verdict in ("a", "b", "tie", "both_bad"):
            store.add(preference(verdict, a, b, "Warranty?", "ana"))
        records = [r.model_dump(mode="json") for r in store.list()]  # what GET /v1/feedback returns
        stats = store.stats()
    frame = records_frame(records)
    assert list(frame["verdict"]) == ["both_bad", "tie", "b", "a"]
    assert frame.iloc[2]["chosen side"] == "adapter: faq"
    rates = win_rate_frame(stats["per_approach"]).set_index("name")
    assert rates.loc["adapter", "games"] == 4 and rates.loc["adapter", "win_rate"] == pytest.approx(0.375)
    assert filters("all", "adapter", " faq ", "", "", "", "2026-01-01", "", "blind only") == {
        "approach": "adapter", "model": "faq", "since": "2026-01-01", "blind": "true"}


def test_win_rate_frame_is_numeric_even_when_empty() -> None:
    # An object-typed column makes Gradio plot win rates as categories.
    frame = win_rate_frame({})
    assert frame.empty and str(frame["win_rate"].dtype) == "float64" and str(frame["games"].dtype) == "int64"


def test_leaderboard_tables() -> None:
    board = {"ratings": [{"name": "concise", "rating": 1100.0, "lower": 1050.2, "upper": 1150.9, "votes": 20}],
             "pairs": [{"a": "base", "b": "concise", "votes": 20, "a_wins": 2, "b_wins": 17, "ties": 1,
                        "a_win_rate": 0.125, "lower": 0.04, "upper": 0.31}]}
    assert ratings_frame(board).iloc[0].tolist() == [1, "concise", 1100.0, "1050 - 1151", 20]
    assert pairs_frame(board).iloc[0]["95% interval"] == "4% - 31%"
    assert clean_filters(" ana ", "", None, "2026-12-01", True) == {"annotator": "ana", "until": "2026-12-01",
                                                                    "blind": "true"}


def test_training_jobs_name_versions_and_flags() -> None:
    assert publish_name("new", LISTING) == ("new", False)
    assert publish_name("concise", LISTING) == ("concise", True), "servers with versions add one"
    assert publish_name("pirate", LISTING + [{"id": "pirate-2", "parent": BASE}]) == ("pirate-3", False)
    assert _filter_flags({"annotator": "ana", "blind": "true", "prompt_set": "p"},
                         {"drop_contradictory": False, "min_agreement": 0.5}) == [
        "--annotator", "ana", "--prompt-set", "p", "--blind", "--keep-contradictory", "--min-agreement", "0.5"]
    assert loss_curves({"train_loss": [[1, 0.69]], "val_loss": [[1, 0.6]], "running": False}) == {
        "train_loss": [[1, 0.69]], "val_loss": [[1, 0.6]]}


def test_ui_refuses_a_public_address_without_a_login() -> None:
    from loradock.cli import app

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    assert parse_auth("ana:secret") == ("ana", "secret")
    result = CliRunner().invoke(app, ["ui", "--host", "0.0.0.0", "--server", "http://127.0.0.1:9"])
    assert result.exit_code == 2 and "--auth USER:PASSWORD" in result.output
    bad = CliRunner().invoke(app, ["ui", "--host", "0.0.0.0", "--auth", "nopassword"])
    assert bad.exit_code == 2 and "USER:PASSWORD" in bad.output


def test_build_ui_has_the_five_tabs() -> None:
    import gradio as gr

    from loradock.ui.app import build_ui

    demo = build_ui("http://127.0.0.1:9", None)
    labels = [b.label for b in demo.blocks.values() if isinstance(b, gr.Tab)]
    assert labels == ["Chat", "Compare", "Leaderboard", "Data", "Adapters"]
