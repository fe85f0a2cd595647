"""The Data tab's training panel: start `train dpo --from-votes` on the filtered votes, follow its progress and
loss curve, and refresh the model list when the adapter is published (so it appears in Compare)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from loradock.core.plots import loss_figure
from loradock.ui.client import ServerClient, split_models
from loradock.ui.train_job import TrainJobs

DEFAULT_NAME = "votes-dpo"


def publish_name(wanted: str, listing: list[dict[str, Any]]) -> tuple[str, bool]:
    """(name, overwrite): a server with adapter versions keeps the name and adds a version; without versions
    a taken name gets the next free ``-N`` suffix."""
    adapters = {m["id"]: m for m in listing if m.get("parent")}
    if wanted not in adapters:
        return wanted, False
    if adapters[wanted].get("version") is not None:
        return wanted, True
    n = 2
    while f"{wanted}-{n}" in adapters:
        n += 1
    return f"{wanted}-{n}", False


def loss_curves(status: dict[str, Any]) -> dict[str, list[list[float]]]:
    """Train and validation loss points of a job, for the plot."""
    return {"train_loss": status["train_loss"], "val_loss": status["val_loss"]}


def status_markdown(status: dict[str, Any]) -> str:
    """One paragraph on where the job is."""
    parts = [f"Job `{status['id']}` → adapter `{status['name']}`"]
    if status["export"]:
        e = status["export"]
        dropped = sum(e["dropped"].values())
        parts.append(f"{e['written']} pairs exported ({dropped} dropped by quality flags)")
    if status["max_steps"]:
        parts.append(f"step {status['steps']}/{status['max_steps']}")
    if status["train_loss"]:
        parts.append(f"loss {status['train_loss'][-1][1]:.4f}")
    if status["published"]:
        parts.append(f"**published**: `{status['published']['name']}` is served and listed in Compare")
    elif status["error"]:
        parts.append(f"**failed**: {status['error']}")
    elif status["running"]:
        parts.append("training...")
    return " · ".join(parts)


def build_train_panel(client: ServerClient, jobs: TrainJobs, admin_key: gr.State, models: gr.State,
                      make_filters: Callable[..., dict[str, Any]], filter_inputs: list[Any],
                      quality_inputs: list[Any]) -> None:
    """Lay out the panel inside the current Blocks (under the Data tab's filters, which it trains on)."""
    gr.Markdown("#### Train DPO on these votes\nRuns `loradock train dpo --from-votes` with the filters above "
                "(pairs only; quality flags as set for export), as its own process.")
    with gr.Row():
        name = gr.Textbox(value=DEFAULT_NAME, label="Adapter name", elem_id="train-name")
        recipe = gr.Textbox(label="Recipe (file or shipped name; empty: defaults)", elem_id="train-recipe")
        max_steps = gr.Number(value=0, precision=0, label="Max steps (0: the recipe's)", elem_id="train-steps")
        start = gr.Button("Train DPO on these votes", variant="primary", elem_id="train-start")
    job_status = gr.Markdown(elem_id="train-status")
    curve = gr.Plot(label="DPO loss", elem_id="train-loss")
    job_id = gr.State(None)
    timer = gr.Timer(1.0, active=False)

    def on_start(key: str | None, wanted: str, rec: str, steps: float | None, listing: list[dict[str, Any]],
                 contra: bool, near: bool, agree: float, *values: str) -> tuple[Any, ...]:
        if not key:
            return None, "Training reads every matching vote, an admin action: unlock with the admin key first.", \
                gr.Timer(active=False)
        if jobs.running():
            return gr.update(), "A training job is already running; wait for it to finish.", gr.update()
        wanted = (wanted or DEFAULT_NAME).strip()
        target, overwrite = publish_name(wanted, listing or [])
        params = {k: v for k, v in make_filters(*values).items() if k not in ("verdict", "approach", "text")}
        quality = {"drop_contradictory": contra, "drop_near_duplicates": near, "min_agreement": agree}
        job = jobs.start(key, target, params, (rec or "").strip() or None, int(steps or 0) or None, overwrite,
                         quality)
        note = " (a new version)" if overwrite else (f" (`{wanted}` is taken)" if target != wanted else "")
        return job.id, f"Started job `{job.id}`: training `{target}`{note}...", gr.Timer(active=True)

    def on_tick(jid: str | None, listing: list[dict[str, Any]]) -> tuple[Any, ...]:
        job = jobs.get(jid)
        if job is None:
            return gr.update(), gr.update(), gr.Timer(active=False), gr.update()
        status = job.status()
        if status["running"]:
            return status_markdown(status), loss_figure(loss_curves(status), "DPO loss"), gr.update(), gr.update()
        fresh: Any = gr.update()
        if status["published"]:
            try:
                fresh = client.models()
                if status["published"]["name"] not in split_models(fresh)[1]:
                    status["error"] = "published, but the server does not list it yet; press Refresh models"
            except RuntimeError as e:
                status["error"] = str(e)
        return status_markdown(status), loss_figure(loss_curves(status), "DPO loss"), gr.Timer(active=False), fresh

    start.click(on_start, [admin_key, name, recipe, max_steps, models, *quality_inputs, *filter_inputs],
                [job_id, job_status, timer])
    timer.tick(on_tick, [job_id, models], [job_status, curve, timer, models])
