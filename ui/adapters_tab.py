"""Adapters tab: the store as the server sees it (/v1/models), manifests, loss curves; load/unload."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from loradock.core.manifest import MANIFEST_FILE, NAME_RE
from loradock.core.store import AdapterStore
from loradock.ui.client import ServerClient, split_models

log = logging.getLogger(__name__)
COLUMNS = ["id", "parent", "loaded", "pinned", "rank", "template", "created", "description"]
LOSS_CURVE = "loss_curve.png"


def store_names(adapters_dir: Path | None) -> list[str]:
    """Adapters in the store folder (empty when the UI cannot read it)."""
    if adapters_dir is None:
        return []
    try:
        return AdapterStore(adapters_dir).names()
    except OSError as e:
        log.info("cannot list %s: %s", adapters_dir, e)
        return []


def models_frame(models: list[dict[str, Any]], in_store: list[str] | None = None) -> pd.DataFrame:
    """One row per model card, then store adapters the server does not serve (unloaded by an admin).

    The template column says whether an adapter was trained on the base's chat template.
    """
    base_sha = next((m.get("template_sha256") for m in models if not m.get("parent")), None)
    served = {m["id"] for m in models}
    rows = []
    for m in models:
        sha = m.get("template_sha256") or ""
        template = sha[:12] if not m.get("parent") else (
            f"{sha[:12]} ok" if sha == base_sha else f"{sha[:12]} MISMATCH")
        stamp = m.get("created")
        created = datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M") if stamp else ""
        rows.append([m["id"], m.get("parent") or "(base)", "yes" if m.get("loaded") else "no",
                     "yes" if m.get("pinned") else "", m.get("rank") or "", template, created,
                     m.get("description") or ""])
    rows += [[name, "(store)", "not served", "", "", "", "", "unloaded; Load serves it again"]
             for name in in_store or [] if name not in served]
    return pd.DataFrame(rows, columns=COLUMNS)


def read_manifest(adapters_dir: Path | None, name: str) -> dict[str, Any] | None:
    """The adapter's manifest.json from the store folder, if the UI can read it."""
    if adapters_dir is None or not NAME_RE.fullmatch(name or ""):
        return None
    path = adapters_dir / name / MANIFEST_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        log.info("cannot read %s: %s", path, e)
        return None


def loss_curve(adapters_dir: Path | None, name: str) -> Any:
    """The training loss curve PNG as an image (loaded here: the store need not be a Gradio allowed path)."""
    if adapters_dir is None or not NAME_RE.fullmatch(name or ""):
        return None
    path = adapters_dir / name / LOSS_CURVE
    if not path.is_file():
        return None
    from PIL import Image

    with Image.open(path) as image:
        return image.copy()


def build_adapters_tab(client: ServerClient, models: gr.State, adapters_dir: Path | None) -> None:
    """Lay out the Adapters tab inside the current Blocks."""
    where = f"store folder `{adapters_dir}`" if adapters_dir else "no store folder given (--adapters-dir)"
    gr.Markdown(f"What the server at `{client.url}` serves (`GET /v1/models`); manifests and loss curves "
                f"from the {where}.")
    table = gr.Dataframe(headers=COLUMNS, interactive=False, wrap=True, elem_id="adapters-table",
                         label="Base and adapters")
    with gr.Row():
        with gr.Column(scale=1):
            adapter = gr.Dropdown(label="Adapter", choices=[], allow_custom_value=True,
                                  elem_id="adapters-select")
            admin_key = gr.Textbox(label="Admin key (only needed to load/unload)", type="password",
                                   placeholder="LORADOCK_ADMIN_KEY" + (" (set by the UI)" if client.admin_key
                                                                       else ""))
            with gr.Row():
                load = gr.Button("Load", variant="primary", elem_id="adapters-load")
                unload = gr.Button("Unload", elem_id="adapters-unload")
            status = gr.Markdown(elem_id="adapters-status")
        with gr.Column(scale=2):
            curve = gr.Image(label="Training loss curve", type="pil", interactive=False, height=300)
            manifest = gr.JSON(label="Manifest")

    def show(name: str | None, listing: list[dict[str, Any]]) -> tuple[Any, Any]:
        if not name:
            return None, None
        card = next((m for m in listing or [] if m["id"] == name), {})
        return loss_curve(adapters_dir, name), read_manifest(adapters_dir, name) or {"served_as": card}

    def on_models(listing: list[dict[str, Any]], current: str | None) -> tuple[Any, Any]:
        in_store = store_names(adapters_dir)
        names = sorted(set(split_models(listing or [])[1]) | set(in_store))
        return models_frame(listing or [], in_store), gr.Dropdown(
            choices=names, value=current if current in names else (names[0] if names else None))

    def act(action: str, name: str | None, key: str | None) -> tuple[Any, ...]:
        if not name:
            return "Choose an adapter first.", gr.update(), gr.update(), gr.update()
        try:
            message = client.admin(action, name, (key or "").strip() or None)
            listing = client.models()
        except (RuntimeError, OSError) as e:
            return f"**{action} failed:** {e}", gr.update(), gr.update(), gr.update()
        return (message, listing, *on_models(listing, name))

    outputs = [status, models, table, adapter]
    adapter.change(show, [adapter, models], [curve, manifest])
    load.click(lambda n, k: act("load", n, k), [adapter, admin_key], outputs)
    unload.click(lambda n, k: act("unload", n, k), [adapter, admin_key], outputs)
    models.change(on_models, [models, adapter], [table, adapter])
