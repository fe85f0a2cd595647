"""Adapters tab: the store as the server sees it (/v1/models, GET /v1/adapters/{name}: manifests and loss
curves); load, unload and pin with the admin key typed in this browser session."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import gradio as gr
import pandas as pd

from loradock.core.plots import loss_figure
from loradock.ui.client import AdminKeyMissing, ServerClient, split_models

COLUMNS = ["id", "parent", "version", "loaded", "pinned", "rank", "template", "created", "description"]


def models_frame(models: list[dict[str, Any]], seen: list[str] | None = None) -> pd.DataFrame:
    """One row per model card, then adapters seen earlier in this session that the server no longer serves
    (unloaded by an admin). The template column says whether an adapter was trained on the base's template."""
    base_sha = next((m.get("template_sha256") for m in models if not m.get("parent")), None)
    served = {m["id"] for m in models}
    rows = []
    for m in models:
        sha = m.get("template_sha256") or ""
        template = sha[:12] if not m.get("parent") else (
            f"{sha[:12]} ok" if sha == base_sha else f"{sha[:12]} MISMATCH")
        stamp = m.get("created")
        created = datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M") if stamp else ""
        rows.append([m["id"], m.get("parent") or "(base)", m.get("version") or "",
                     "yes" if m.get("loaded") else "no", "yes" if m.get("pinned") else "", m.get("rank") or "",
                     template, created, m.get("description") or ""])
    rows += [[name, "(store)", "", "not served", "", "", "", "", "unloaded; Load serves it again"]
             for name in seen or [] if name not in served]
    return pd.DataFrame(rows, columns=COLUMNS)


def curves(detail: dict[str, Any]) -> dict[str, list[list[float]]]:
    """The manifest's loss curves (``[step, loss]`` points) by name."""
    metrics = detail.get("metrics") or {}
    return {"train_loss": metrics.get("train_loss") or [], "val_loss": metrics.get("val_loss") or []}


def build_adapters_tab(client: ServerClient, models: gr.State, admin_key: gr.State) -> None:
    """Lay out the Adapters tab inside the current Blocks."""
    gr.Markdown(f"What the server at `{client.url}` serves (`GET /v1/models`); manifests and loss curves from "
                "`GET /v1/adapters/{name}`. Load, Unload and Pin need the admin key (top of the page).")
    table = gr.Dataframe(headers=COLUMNS, interactive=False, wrap=True, elem_id="adapters-table",
                         label="Base and adapters")
    seen = gr.State([])
    with gr.Row():
        with gr.Column(scale=1):
            adapter = gr.Dropdown(label="Adapter", choices=[], allow_custom_value=True, elem_id="adapters-select")
            with gr.Row():
                load = gr.Button("Load", variant="primary", elem_id="adapters-load")
                pin = gr.Button("Load and pin", elem_id="adapters-pin")
                unload = gr.Button("Unload", elem_id="adapters-unload")
            status = gr.Markdown(elem_id="adapters-status")
        with gr.Column(scale=2):
            curve = gr.Plot(label="Training loss", elem_id="adapters-curve")
            manifest = gr.JSON(label="Manifest (as the server reports it)")

    def show(name: str | None) -> tuple[Any, Any]:
        if not name:
            return None, None
        try:
            detail = client.adapter(name)
        except RuntimeError as e:
            return None, {"error": str(e)}
        return loss_figure(curves(detail), f"{name} ({detail.get('method', '')})"), detail

    def on_models(listing: list[dict[str, Any]], current: str | None, known: list[str]) -> tuple[Any, ...]:
        names = sorted(set(split_models(listing or [])[1]) | set(known or []))
        return models_frame(listing or [], known), gr.Dropdown(
            choices=names, value=current if current in names else (names[0] if names else None)), names

    def act(action: str, name: str | None, key: str | None, known: list[str]) -> tuple[Any, ...]:
        if not name:
            return "Choose an adapter first.", gr.update(), gr.update(), gr.update(), gr.update()
        try:
            message = client.admin("unload" if action == "unload" else "load", name, key, pin=action == "pin")
            listing = client.models()
        except (AdminKeyMissing, RuntimeError, OSError) as e:
            return f"**{action} refused:** {e}", gr.update(), gr.update(), gr.update(), gr.update()
        return (message, listing, *on_models(listing, name, [*known, name]))

    outputs = [status, models, table, adapter, seen]
    adapter.change(show, adapter, [curve, manifest])
    for button, action in ((load, "load"), (pin, "pin"), (unload, "unload")):
        button.click(lambda n, k, s, a=action: act(a, n, k, s), [adapter, admin_key, seen], outputs)
    models.change(on_models, [models, adapter, seen], [table, adapter, seen])
