"""The Gradio app over a running loradock server, HTTP only: Chat, Compare (blind arena and named),
Leaderboard, Data and Adapters. It opens no database, reads no store file and loads no model.

Admin actions (load, unload, pin; reading, deleting and exporting records; training) use the admin key an
admin types at the top of the page. It is held in that browser session only (``gr.State``), checked against
the server, and never read from this process's environment.
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from loradock.ui.adapters_tab import build_adapters_tab
from loradock.ui.chat_tab import build_chat_tab
from loradock.ui.client import ServerClient
from loradock.ui.compare_tab import build_compare_tab
from loradock.ui.data_tab import build_data_tab
from loradock.ui.leaderboard_tab import build_leaderboard_tab
from loradock.ui.train_job import TrainJobs

log = logging.getLogger(__name__)
CSS = """
.compare-answer { min-height: 6em; }
footer { display: none !important; }
"""


def build_ui(server_url: str, api_key: str | None = None, rag_collection: str = "faq") -> gr.Blocks:
    """Build the app. It loads no model and holds no admin key: everything goes to ``server_url``."""
    client = ServerClient(server_url.rstrip("/"), api_key or None)
    jobs = TrainJobs(client.url)

    with gr.Blocks(title="loradock", fill_width=True) as demo:
        models = gr.State([])
        admin_key = gr.State(None)
        with gr.Row():
            gr.Markdown(f"## loradock\nServer `{client.url}`")
            key_box = gr.Textbox(label="Admin key (this browser session only)", type="password", scale=1,
                                 elem_id="admin-key-input")
            unlock = gr.Button("Unlock admin", scale=0, size="sm", min_width=120, elem_id="admin-unlock")
            lock = gr.Button("Lock", scale=0, size="sm", min_width=80, elem_id="admin-lock")
            refresh = gr.Button("Refresh models", scale=0, size="sm", min_width=140, elem_id="refresh-models")
        with gr.Row():
            server_status = gr.Markdown(elem_id="server-status")
            admin_status = gr.Markdown("Admin: locked.", elem_id="admin-status")
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                build_chat_tab(client, models)
            with gr.Tab("Compare", id="compare"):
                build_compare_tab(client, models, rag_collection)
            with gr.Tab("Leaderboard", id="leaderboard") as board_tab:
                load_board, board_inputs, board_outputs = build_leaderboard_tab(client)
            with gr.Tab("Data", id="data") as data_tab:
                load_data, data_inputs, data_outputs = build_data_tab(client, admin_key, models, jobs)
            with gr.Tab("Adapters", id="adapters") as adapters_tab:
                build_adapters_tab(client, models, admin_key)

        def fetch_models() -> tuple[Any, str]:
            try:
                listing = client.models()
            except RuntimeError as e:
                log.warning("cannot list models: %s", e)
                return gr.update(), f"**Cannot reach the server:** {e}"
            adapters = sum(1 for m in listing if m.get("parent"))
            return listing, f"{len(listing) - adapters} base model, {adapters} adapters."

        def on_unlock(typed: str | None) -> tuple[Any, str, str]:
            typed = (typed or "").strip()
            if not typed:
                return None, "", "Admin: locked. Type the admin key first."
            try:
                client.check_admin(typed)
            except RuntimeError as e:
                return None, "", f"Admin: locked. **The server refused the key:** {e}"
            return typed, "", "Admin: **unlocked** for this browser session."

        demo.load(fetch_models, None, [models, server_status])
        refresh.click(fetch_models, None, [models, server_status])
        unlock.click(on_unlock, key_box, [admin_key, key_box, admin_status])
        key_box.submit(on_unlock, key_box, [admin_key, key_box, admin_status])
        lock.click(lambda: (None, "Admin: locked."), None, [admin_key, admin_status])
        adapters_tab.select(fetch_models, None, [models, server_status])  # resident state changes
        data_tab.select(load_data, data_inputs, data_outputs)
        board_tab.select(load_board, board_inputs, board_outputs)
    return demo


def launch(demo: gr.Blocks, host: str, port: int, share: bool = False,
           auth: tuple[str, str] | None = None) -> None:
    """Serve the app (blocks until interrupted); ``auth`` turns on Gradio's own login page."""
    demo.queue(default_concurrency_limit=8)
    demo.launch(server_name=host, server_port=port, share=share, css=CSS, show_error=True, footer_links=[],
                auth=auth)
