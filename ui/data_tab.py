"""Data tab: preference records through the server's admin routes (browse, delete, quality flags, export), win
rates from /v1/feedback/stats, and DPO training on the votes as a subprocess (ui/train_job.py)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from loradock.core.dpo_files import write_dpo
from loradock.ui.client import AdminKeyMissing, ServerClient
from loradock.ui.train_job import TrainJobs
from loradock.ui.train_panel import build_train_panel

COLUMNS = ["id", "created", "verdict", "blind", "chosen side", "rejected side", "prompt", "chosen", "rejected",
           "annotator", "prompt set"]
VERDICTS = ("a", "b", "tie", "both_bad")
APPROACHES = ("prompting", "rag", "adapter", "base", "app")
ALL = "all"
BLIND = {ALL: None, "blind only": "true", "named only": "false"}


def _short(text: str, n: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _side(approach: str, model: str | None, version: str | None = None) -> str:
    name = f"{model}@{version}" if model and version else model
    return f"{approach}: {name}" if name else approach


def records_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One table row per record (as the server lists them), newest first."""
    rows = [[r["id"], datetime.fromisoformat(r["created"]).strftime("%Y-%m-%d %H:%M:%S"), r["verdict"],
             "yes" if r.get("blind") else "", _side(r["chosen_approach"], r["chosen_model"], r.get("chosen_version")),
             _side(r["rejected_approach"], r["rejected_model"], r.get("rejected_version")),
             _short(r["prompt"][-1]["content"]), _short(r["chosen"]), _short(r["rejected"]), r.get("annotator") or "",
             r.get("prompt_set") or ""] for r in records]
    return pd.DataFrame(rows, columns=COLUMNS)


def win_rate_frame(table: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Bar-plot data: one row per approach (or adapter) with its win rate and games."""
    rows = [{"name": k, "win_rate": v["win_rate"], "games": v["games"]} for k, v in table.items()]
    # Explicit dtypes: an empty frame would otherwise be object-typed and plot win rates as categories.
    return pd.DataFrame(rows, columns=["name", "win_rate", "games"]).astype(
        {"name": str, "win_rate": float, "games": int})


def stats_markdown(stats: dict[str, Any], shown: int | None) -> str:
    """Counts line shown above the charts."""
    v = stats["verdicts"]
    showing = f" (showing {shown})" if shown is not None else ""
    return (f"**{stats['total']} records**{showing} · A better {v['a']} · B better {v['b']} · "
            f"tie {v['tie']} · both bad {v['both_bad']} · **{stats['pairs']} exportable pairs** "
            "(ties and both-bad are kept but never exported)")


def quality_markdown(q: dict[str, Any]) -> str:
    """The quality flags in one paragraph."""
    f = q["flagged"]
    lines = [f"**Data quality** over {q['pairs']} pairs: {f['contradictory']} contradictory votes in "
             f"{q['contradictory_groups']} prompt/pair groups · {f['near_duplicate']} on near-duplicate prompts"]
    lines += [f"- `{d['prompt']}` repeats `{d['repeats']}`" for d in q["near_duplicates"][:5]]
    return "\n".join(lines)


def agreement_frame(q: dict[str, Any]) -> pd.DataFrame:
    """Per annotator: votes, votes on repeated pairs, agreement with the others' majority."""
    rows = [[who, a["votes"], a["repeated"], "" if a["agreement"] is None else f"{a['agreement']:.0%}"]
            for who, a in q["agreement"].items()]
    return pd.DataFrame(rows, columns=["annotator", "votes", "on repeated pairs", "agreement"])


def filters(verdict: str | None, approach: str | None, model: str | None, annotator: str | None,
            text: str | None, prompt_set: str | None, since: str | None, until: str | None,
            blind: str | None) -> dict[str, Any]:
    """Query parameters for the server's feedback routes (empty fields left out)."""
    values = {"verdict": None if verdict == ALL else verdict, "approach": None if approach == ALL else approach,
              "model": model, "annotator": annotator, "text": text, "prompt_set": prompt_set, "since": since,
              "until": until, "blind": BLIND.get(blind or ALL)}
    return {k: v.strip() for k, v in values.items() if v and v.strip()}


def build_data_tab(client: ServerClient, admin_key: gr.State, models: gr.State,
                   jobs: TrainJobs) -> tuple[Callable[..., Any], list[Any], list[Any]]:
    """Lay out the Data tab; returns (load function, its inputs, its outputs) so the app reloads it."""
    with gr.Row():
        verdict = gr.Dropdown([ALL, *VERDICTS], value=ALL, label="Verdict")
        approach = gr.Dropdown([ALL, *APPROACHES], value=ALL, label="Approach (either side)")
        model = gr.Textbox(label="Model or adapter (either side)")
        annotator = gr.Textbox(label="Annotator")
        text = gr.Textbox(label="Text contains")
    with gr.Row():
        prompt_set = gr.Textbox(label="Prompt set", elem_id="data-prompt-set")
        since = gr.Textbox(label="Since (YYYY-MM-DD)")
        until = gr.Textbox(label="Until (YYYY-MM-DD)")
        blind = gr.Dropdown(list(BLIND), value=ALL, label="Blind votes")
    refresh = gr.Button("Refresh", elem_id="data-refresh")
    summary = gr.Markdown(elem_id="data-summary")
    with gr.Row():
        per_approach = gr.BarPlot(x="name", y="win_rate", title="Win rate per approach", y_lim=[0, 1],
                                  x_title="approach", y_title="win rate", height=240)
        per_adapter = gr.BarPlot(x="name", y="win_rate", title="Win rate per adapter", y_lim=[0, 1],
                                 x_title="adapter", y_title="win rate", height=240)
    quality = gr.Markdown(elem_id="data-quality")
    agreement = gr.Dataframe(interactive=False, label="Agreement per annotator (on repeated prompt/pair votes)",
                             elem_id="data-agreement")
    table = gr.Dataframe(headers=COLUMNS, interactive=False, wrap=True, max_height=420, elem_id="data-table",
                         label="Preference records (admin; click a row to select it)")
    with gr.Row():
        record_id = gr.Textbox(label="Selected record id", elem_id="data-record-id", scale=3)
        delete = gr.Button("Delete record", variant="stop", scale=1, elem_id="data-delete")
    with gr.Row():
        fmt = gr.Radio(["dpo-jsonl", "hf-parquet"], value="dpo-jsonl", label="Export format", scale=1)
        drop_contra = gr.Checkbox(value=True, label="Drop contradictory votes", scale=1)
        drop_near = gr.Checkbox(value=False, label="Drop near-duplicate prompts", scale=1)
        min_agree = gr.Slider(0, 1, value=0, step=0.05, label="Drop annotators below this agreement", scale=1)
    with gr.Row():
        export = gr.Button("Export pairs", elem_id="data-export", scale=1)
        exported = gr.File(label="Exported file", interactive=False, scale=3)
    status = gr.Markdown(elem_id="data-status")
    inputs = [verdict, approach, model, annotator, text, prompt_set, since, until, blind]

    def load(key: str | None, *values: str) -> tuple[Any, ...]:
        params = filters(*values)
        try:
            stats = client.stats(params)
        except RuntimeError as e:
            return (gr.update(),) * 6 + (f"**Cannot load:** {e}",)
        charts = (win_rate_frame(stats["per_approach"]), win_rate_frame(stats["per_adapter"]))
        if not key:
            return (records_frame([]), stats_markdown(stats, None), *charts, "", agreement_frame({"agreement": {}}),
                    "Records, quality flags, deletion and export are admin actions: unlock with the admin key "
                    "at the top of the page.")
        try:
            listing = client.records(params, key)
            q = client.quality(params, key)
        except RuntimeError as e:
            return (gr.update(), stats_markdown(stats, None), *charts, gr.update(), gr.update(), f"**{e}**")
        return (records_frame(listing["data"]), stats_markdown(stats, len(listing["data"])), *charts,
                quality_markdown(q), agreement_frame(q), "")

    def remove(key: str | None, rid: str, *values: str) -> tuple[Any, ...]:
        rid = (rid or "").strip()
        if not rid:
            return (*load(key, *values)[:6], "", "Select a row first.")
        try:
            client.delete_record(rid, key)
        except (AdminKeyMissing, RuntimeError) as e:
            return (*(gr.update(),) * 6, rid, f"**Not deleted:** {e}")
        return (*load(key, *values)[:6], "", f"Deleted `{rid}`.")

    def export_pairs(key: str | None, form: str, contra: bool, near: bool, agree: float,
                     *values: str) -> tuple[Any, str]:
        params = filters(*values)
        if params.get("verdict") in ("tie", "both_bad"):
            return None, "Ties and both-bad votes are never exported; clear the verdict filter."
        params.pop("verdict", None)
        try:
            result = client.export(params, {"drop_contradictory": contra, "drop_near_duplicates": near,
                                            "min_agreement": agree}, key)
            out = Path(tempfile.mkdtemp(prefix="loradock-export-")) / "preferences"
            if form == "dpo-jsonl":
                path = write_dpo(result["data"], out.with_suffix(".dpo.jsonl"), form)
            else:
                path = Path(shutil.make_archive(str(out), "zip", write_dpo(result["data"], out, form)))
        except (AdminKeyMissing, RuntimeError, ValueError) as e:
            return None, f"**Not exported:** {e}"
        return str(path), f"Exported {_report_line(result['report'])}. Train on them with `loradock train dpo`."

    def select(frame: pd.DataFrame, evt: gr.SelectData) -> str:
        row = evt.index[0] if isinstance(evt.index, list | tuple) else evt.index
        return str(frame.iloc[row]["id"]) if frame is not None and len(frame) > row else ""

    views = [table, summary, per_approach, per_adapter, quality, agreement, status]
    refresh.click(load, [admin_key, *inputs], views)
    admin_key.change(load, [admin_key, *inputs], views)
    for dropdown in (verdict, approach, blind):
        dropdown.change(load, [admin_key, *inputs], views)
    for box in (model, annotator, text, prompt_set, since, until):
        box.submit(load, [admin_key, *inputs], views)
    delete.click(remove, [admin_key, record_id, *inputs],
                 [table, summary, per_approach, per_adapter, quality, agreement, record_id, status])
    export.click(export_pairs, [admin_key, fmt, drop_contra, drop_near, min_agree, *inputs], [exported, status])
    table.select(select, table, record_id)
    build_train_panel(client, jobs, admin_key, models, lambda *v: filters(*v), inputs,
                      [drop_contra, drop_near, min_agree])
    return load, [admin_key, *inputs], views


def _report_line(report: dict[str, Any]) -> str:
    dropped = ", ".join(f"{n} {k.replace('_', '-')}" for k, n in report["dropped"].items() if n) or "none"
    kept = ", ".join(f"{n} {k.replace('_', '-')}" for k, n in report["kept_flagged"].items() if n) or "none"
    return (f"{report['written']} of {report['pairs']} pairs (dropped: {dropped}; kept although flagged: "
            f"{kept})")
