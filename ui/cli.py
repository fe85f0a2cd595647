"""`loradock ui`: the Gradio app, run against a running loradock server.

The UI keeps no admin key: admins type it in the page. Exposing the UI beyond this machine needs a login
(``--auth``, Gradio's own) unless ``--insecure`` says that is intended.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

import typer

log = logging.getLogger(__name__)
ConfigOpt = typer.Option(None, "--config", help="YAML settings file (keys as in core/settings.py).")


def _secret(value: object) -> str | None:
    return value.get_secret_value() if value is not None else None  # type: ignore[attr-defined]


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the UI on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """``USER:PASSWORD`` as Gradio's auth pair."""
    if value is None:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise typer.BadParameter("use --auth USER:PASSWORD (both non-empty)", param_hint="--auth")
    return user, password


def ui_cmd(
    port: int = typer.Option(7860, help="Port of the UI."),
    host: str = typer.Option("127.0.0.1", help="Bind address of the UI; a non-loopback one needs --auth."),
    server: str | None = typer.Option(None, "--server",
                                      help="loradock server URL (default: http://HOST:PORT from settings)."),
    api_key: str | None = typer.Option(None, "--api-key", envvar="LORADOCK_API_KEY",
                                       help="Bearer key for inference and votes."),
    auth: str | None = typer.Option(None, "--auth", envvar="LORADOCK_UI_AUTH", show_default=False,
                                    help="USER:PASSWORD for Gradio's login page (needed off localhost)."),
    insecure: bool = typer.Option(False, "--insecure", help="Serve on a non-loopback address without --auth."),
    collection: str = typer.Option("faq", "--collection", help="Default RAG collection in Compare."),
    share: bool = typer.Option(False, help="Create a public Gradio share link (needs internet and --auth)."),
    config: Path | None = ConfigOpt,
) -> None:
    """Run the Gradio UI against a running loradock server (it loads no model and opens no database)."""
    from loradock.core.settings import load_settings
    from loradock.ui.app import build_ui, launch

    login = parse_auth(auth)
    if (share or not is_loopback(host)) and login is None and not insecure:
        raise typer.BadParameter(
            f"refusing to serve the UI on {host}{' with a share link' if share else ''} without a login: anyone "
            "who reaches it could vote and chat; pass --auth USER:PASSWORD (or LORADOCK_UI_AUTH), or --insecure "
            "if that is intended", param_hint="--host")
    settings = load_settings(config)
    server_host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    url = server or f"http://{server_host}:{settings.port}"
    demo = build_ui(url, api_key or _secret(settings.api_key), collection)
    typer.echo(f"loradock UI on http://{host}:{port} (server {url})")
    launch(demo, host, port, share, login)
