"""`loradock ui`: the Gradio app, run against a running loradock server."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

log = logging.getLogger(__name__)
ConfigOpt = typer.Option(None, "--config", help="YAML settings file (keys as in core/settings.py).")
DbOpt = typer.Option(None, "--db-url", help="SQLAlchemy URL of the preference database "
                                            "(default: LORADOCK_DB_URL or sqlite:///var/loradock.db).")


def _secret(value: object) -> str | None:
    return value.get_secret_value() if value is not None else None  # type: ignore[attr-defined]


def ui_cmd(
    port: int = typer.Option(7860, help="Port of the UI."),
    host: str = typer.Option("127.0.0.1", help="Bind address of the UI (0.0.0.0 to expose it)."),
    server: str | None = typer.Option(None, "--server",
                                      help="loradock server URL (default: http://HOST:PORT from settings)."),
    api_key: str | None = typer.Option(None, "--api-key", envvar="LORADOCK_API_KEY",
                                       help="Bearer key for inference."),
    admin_key: str | None = typer.Option(None, "--admin-key", envvar="LORADOCK_ADMIN_KEY",
                                         help="Bearer key for load/unload (else typed in the Adapters tab)."),
    db_url: str | None = DbOpt,
    adapters_dir: Path | None = typer.Option(None, "--adapters-dir",
                                             help="Adapter store folder, to show manifests and loss curves."),
    collection: str = typer.Option("faq", "--collection", help="Default RAG collection in Compare."),
    share: bool = typer.Option(False, help="Create a public Gradio share link (needs internet)."),
    config: Path | None = ConfigOpt,
) -> None:
    """Run the Gradio UI against a running loradock server (it loads no model itself)."""
    from loradock.core.settings import load_settings
    from loradock.ui.app import build_ui, launch

    settings = load_settings(config, db_url=db_url, adapters_dir=adapters_dir)
    server_host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    url = server or f"http://{server_host}:{settings.port}"
    demo = build_ui(url, api_key or _secret(settings.api_key), admin_key or _secret(settings.admin_key),
                    settings.db_url, settings.adapters_dir, collection)
    typer.echo(f"loradock UI on http://{host}:{port} (server {url})")
    launch(demo, host, port, share)
