"""`loradock demo`: the server and the UI together, each as its own process (they meet over HTTP only)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import typer


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def demo_cmd(
    port: int = typer.Option(8000, help="Server port."),
    ui_port: int = typer.Option(7860, help="UI port."),
    host: str = typer.Option("127.0.0.1", help="Bind address for both."),
) -> None:
    """Start the server (with the demo adapters and the demo RAG collection) and the UI together."""
    from rich.console import Console

    from loradock.core.procs import NotHealthy, wait_healthy

    console = Console()
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the server and the UI too, like Ctrl-C
    exe = [sys.executable, "-m", "loradock"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    faq = Path("data/faq_docs")
    if faq.is_dir():
        subprocess.run([*exe, "rag", "index", str(faq), "--collection", "faq"], env=env, check=False)
    server = subprocess.Popen([*exe, "serve", "--host", host, "--port", str(port)], env=env)
    url = f"http://{host}:{port}"
    procs = [server]
    try:
        with console.status("starting the vLLM engine (about 30 s on 2 cores) ..."):
            try:
                wait_healthy(url, server, 600)
            except NotHealthy as e:
                console.print(f"[red]the server did not start:[/] {e}")
                raise typer.Exit(1) from e
        ui = subprocess.Popen([*exe, "ui", "--server", url, "--host", host, "--port", str(ui_port)], env=env)
        procs.append(ui)
        console.print(f"[bold green]server[/]  {url}/v1   (OpenAI-compatible; try GET {url}/v1/models)")
        console.print(f"[bold green]ui[/]      http://{host}:{ui_port}")
        console.print("Ctrl-C stops both.")
        while all(p.poll() is None for p in procs):
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
