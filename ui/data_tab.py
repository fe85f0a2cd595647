"""Data tab: browse, filter and delete preference records; win rates; export DPO pairs."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from loradock.core.feedback import APPROACHES, VERDICTS, FeedbackStore, PreferenceRecord

COLUMNS = ["id", "created", "verdict", "chosen side", "rejected side", "prompt", "chosen", "rejected",
           "annotator"]
ALL = "all"


def _short(text: str, n: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _side(approach: str, model: str | None) -> str:
    return f"{approach}: {model}" if model else approach


def records_frame(records: list[PreferenceRecord]) -> pd.DataFrame:
    """One table row per record, newest first."""
    rows = [[r.id, r.created.strftime("%Y-%m-%d %H:%M:%S"), r.verdict,
             _side(r.chosen_approach, r.chosen_model), _side(r.rejected_approach, r.rejected_model),
             _short(r.prompt[-1]["content"]), _short(r.chosen), _short(r.rejected), r.annotator or ""]
            for r in records]
    return pd.DataFrame(rows, columns=COLUMNS)


def win_rate_frame(table: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Bar-plot data: one row per approach (or adapter) with its win rate and games."""
    rows = [{"name": k, "win_rate": v["win_rate"], "games": v["games"]} for k, v in table.items()]
    # Explicit dtypes: an empty frame would otherwise be object-typed and plot win rates as categories.
    return pd.DataFrame(rows, columns=["name", "win_rate", "games"]).astype(
        {"name": str, "win_rate": float, "games": int})


def stats_markdown(stats: dict[str, Any], shown: int) -> str:
    """Counts line shown above the charts."""
    v = stats["verdicts"]
    return (f"**{stats['total']} records** (showing {shown}) · A better {v['a']} · B better {v['b']} · "
            f"tie {v['tie']} · both bad {v['both_bad']} · **{stats['pairs']} exportable pairs** "
            "(ties and both-bad are kept but never exported)")


def _filters(verdict: str | None, approach: str | None, model: str | None, annotator: str | None,
             text: str | None) -> dict[str, Any]:
    def clean(value: str | None) -> str | None:
        return (value or "").strip() or None

    return {"verdict": None if verdict == ALL else clean(verdict),
            "approach": None if approach == ALL else clean(approach), "model": clean(model),
            "annotator": clean(annotator), "text": clean(text)}


def build_data_tab(feedback: FeedbackStore) -> tuple[Callable[..., Any], list[Any], list[Any]]:
    """Lay out the Data tab inside the current Blocks; returns (load function, its inputs, its outputs)
    so the app can reload the records when the tab is opened."""
    with gr.Row():
        verdict = gr.Dropdown([ALL, *VERDICTS], value=ALL, label="Verdict")
        approach = gr.Dropdown([ALL, *APPROACHES], value=ALL, label="Approach (either side)")
        model = gr.Textbox(label="Model or adapter (either side)")
        annotator = gr.Textbox(label="Annotator")
        text = gr.Textbox(label="Text contains")
    refresh = gr.Button("Refresh", elem_id="data-refresh")
    summary = gr.Markdown(elem_id="data-summary")
    with gr.Row():
        per_approach = gr.BarPlot(x="name", y="win_rate", title="Win rate per approach", y_lim=[0, 1],
                                  x_title="approach", y_title="win rate", height=240)
        per_adapter = gr.BarPlot(x="name", y="win_rate", title="Win rate per adapter", y_lim=[0, 1],
                                 x_title="adapter", y_title="win rate", height=240)
    table = gr.Dataframe(headers=COLUMNS, interactive=False, wrap=True, max_height=420, elem_id="data-table",
                         label="Preference records (click a row to select it)",
                         column_widths=["17%", "10%", "6%", "10%", "10%", "15%", "14%", "12%", "6%"])
    with gr.Row():
        record_id = gr.Textbox(label="Selected record id", elem_id="data-record-id", scale=3)
        delete = gr.Button("Delete record", variant="stop", scale=1)
    with gr.Row():
        export = gr.Button("Export pairs (dpo-jsonl)", elem_id="data-export", scale=1)
        exported = gr.File(label="Exported file", interactive=False, scale=3)
    status = gr.Markdown(elem_id="data-status")
    filter_inputs = [verdict, approach, model, annotator, text]

    def load(*values: str) -> tuple[Any, ...]:
        try:
            records = feedback.list(**_filters(*values), limit=1000)
        except ValueError as e:
            return gr.update(), gr.update(), gr.update(), gr.update(), str(e)
        stats = feedback.stats()
        return (records_frame(records), stats_markdown(stats, len(records)),
                win_rate_frame(stats["per_approach"]), win_rate_frame(stats["per_adapter"]), "")

    def remove(rid: str, *values: str) -> tuple[Any, ...]:
        rid = (rid or "").strip()
        message = (f"Deleted `{rid}`." if rid and feedback.delete(rid)
                   else f"No record `{rid}`; select a row first." if rid else "Select a row first.")
        return (*load(*values)[:4], "", message)

    def export_pairs(*values: str) -> tuple[Any, str]:
        out = Path(tempfile.mkdtemp(prefix="loradock-export-")) / "preferences.dpo.jsonl"
        filters = _filters(*values)
        if filters["verdict"] in ("tie", "both_bad"):
            return None, "Ties and both-bad votes are never exported; clear the verdict filter."
        rows = feedback.export_dpo_jsonl(out, **filters)
        return str(out), (f"Exported {rows} pairs (TRL conversational prompt/chosen/rejected). "
                          "Train on them with `loradock train dpo`.")

    def select(frame: pd.DataFrame, evt: gr.SelectData) -> str:
        row = evt.index[0] if isinstance(evt.index, list | tuple) else evt.index
        return str(frame.iloc[row]["id"]) if frame is not None and len(frame) > row else ""

    views = [table, summary, per_approach, per_adapter, status]
    refresh.click(load, filter_inputs, views)
    for dropdown in (verdict, approach):
        dropdown.change(load, filter_inputs, views)
    for box in (model, annotator, text):
        box.submit(load, filter_inputs, views)
    delete.click(remove, [record_id, *filter_inputs], [table, summary, per_approach, per_adapter, record_id,
                                                       status])
    export.click(export_pairs, filter_inputs, [exported, status])
    table.select(select, table, record_id)
    return load, filter_inputs, views
