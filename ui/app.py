"""The Gradio app: Chat, Compare, Data and Adapters tabs over a running loradock server (HTTP only)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import gradio as gr

from loradock.core.feedback import FeedbackStore
from loradock.ui.adapters_tab import build_adapters_tab
from loradock.ui.chat_tab import build_chat_tab
from loradock.ui.client import ServerClient
from loradock.ui.compare_tab import build_compare_tab
from loradock.ui.data_tab import build_data_tab

log = logging.getLogger(__name__)
CSS = """
.compare-answer { min-height: 6em; }
footer { display: none !important; }
"""


def build_ui(server_url: str, api_key: str | None = None, admin_key: str | None = None,
             db_url: str = "sqlite:///var/loradock.db", adapters_dir: Path | None = None,
             rag_collection: str = "faq") -> gr.Blocks:
    """Build the app. It loads no model: inference goes to ``server_url``; votes go to ``db_url``."""
    client = ServerClient(server_url.rstrip("/"), api_key or None, admin_key or None)
    feedback = FeedbackStore(db_url)

    with gr.Blocks(title="loradock", fill_width=True) as demo:
        models = gr.State([])
        with gr.Row():
            gr.Markdown(f"## loradock\nServer `{client.url}` · preferences in `{_redact(db_url)}`")
            refresh = gr.Button("Refresh models", scale=0, size="sm", min_width=140, elem_id="refresh-models")
        server_status = gr.Markdown(elem_id="server-status")
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                build_chat_tab(client, models)
            with gr.Tab("Compare", id="compare"):
                build_compare_tab(client, feedback, models, rag_collection)
            with gr.Tab("Data", id="data") as data_tab:
                load_data, data_inputs, data_outputs = build_data_tab(feedback)
            with gr.Tab("Adapters", id="adapters") as adapters_tab:
                build_adapters_tab(client, models, adapters_dir)

        def fetch_models() -> tuple[Any, str]:
            try:
                listing = client.models()
            except (RuntimeError, OSError) as e:
                log.warning("cannot list models: %s", e)
                return gr.update(), f"**Cannot reach the server:** {e}"
            adapters = sum(1 for m in listing if m.get("parent"))
            return listing, f"{len(listing) - adapters} base model, {adapters} adapters."

        demo.load(fetch_models, None, [models, server_status])
        refresh.click(fetch_models, None, [models, server_status])
        adapters_tab.select(fetch_models, None, [models, server_status])  # resident state changes
        demo.load(load_data, data_inputs, data_outputs)
        data_tab.select(load_data, data_inputs, data_outputs)
    return demo


def _redact(url: str) -> str:
    """A database URL without its password, for display."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only for display
        return "(database)"


def launch(demo: gr.Blocks, host: str, port: int, share: bool = False) -> None:
    """Serve the app (blocks until interrupted)."""
    demo.queue(default_concurrency_limit=8)
    demo.launch(server_name=host, server_port=port, share=share, css=CSS, show_error=True,
                footer_links=[])
