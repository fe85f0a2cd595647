"""`loradock demo`: the server and the UI together, each as its own process (they meet over HTTP only).

A child that dies is started again; one that keeps dying (``max_restarts`` times within ``window_s``) ends
the demo with exit code 1 and says which child and how it exited.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import typer

log = logging.getLogger(__name__)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def install_stop_signals() -> None:
    """SIGTERM (``kill``) and SIGINT (Ctrl-C, ``kill -INT``) stop the demo and its children; SIGINT too when
    the demo was started in the background, where the shell starts it with SIGINT ignored."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)


class ChildFailed(RuntimeError):
    """A child process kept exiting; the message says which one and how."""


@dataclass
class Child:
    name: str
    cmd: list[str]
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    exits: deque[float] = field(default_factory=deque)


class Children:
    """Child processes kept running: one that exits is started again, one that keeps exiting is fatal."""

    def __init__(self, max_restarts: int = 3, window_s: float = 300.0) -> None:
        self.max_restarts, self.window_s = max_restarts, window_s
        self.children: list[Child] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> Child:
        child = Child(name, cmd, env, subprocess.Popen(cmd, env=env))
        self.children.append(child)
        return child

    def check(self) -> list[str]:
        """Restart children that exited; returns their names. Raises ChildFailed when one keeps exiting."""
        restarted = []
        for child in self.children:
            assert child.proc is not None
            code = child.proc.poll()
            if code is None:
                continue
            now = time.monotonic()
            child.exits.append(now)
            while child.exits and now - child.exits[0] > self.window_s:
                child.exits.popleft()
            if len(child.exits) > self.max_restarts:
                raise ChildFailed(f"the {child.name} exited with code {code} {len(child.exits)} times within "
                                  f"{self.window_s:.0f} s; see its log above")
            log.warning("the %s exited with code %s; starting it again", child.name, code)
            child.proc = subprocess.Popen(child.cmd, env=child.env)
            restarted.append(child.name)
        return restarted

    def stop(self, timeout: float = 20) -> None:
        """SIGINT every child, then kill those still running after ``timeout``."""
        procs = [c.proc for c in self.children if c.proc is not None]
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()


def demo_cmd(
    port: int = typer.Option(8000, help="Server port."),
    ui_port: int = typer.Option(7860, help="UI port."),
    host: str = typer.Option("127.0.0.1", help="Bind address for both. A non-loopback address needs "
                                               "LORADOCK_API_KEY and LORADOCK_ADMIN_KEY, or --insecure."),
    insecure: bool = typer.Option(False, "--insecure", help="Serve a non-loopback address without keys "
                                                           "(LORADOCK_INSECURE=1)."),
) -> None:
    """Start the server (with the demo adapters and the demo RAG collection) and the UI together."""
    from rich.console import Console

    from loradock.core.procs import NotHealthy, wait_healthy
    from loradock.core.settings import load_settings
    from loradock.serve.cli import is_loopback, refuse_open_bind

    settings = load_settings(host=host, insecure=insecure or None)
    refuse_open_bind(settings)  # before indexing or starting anything
    if not (settings.insecure or is_loopback(host) or os.environ.get("LORADOCK_UI_AUTH")):
        raise typer.BadParameter(f"refusing to serve the UI on {host} without a login: set LORADOCK_UI_AUTH="
                                 "USER:PASSWORD, bind 127.0.0.1, or pass --insecure", param_hint="--host")

    console = Console()
    install_stop_signals()
    exe = [sys.executable, "-m", "loradock"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    faq = Path("data/faq_docs")
    if faq.is_dir():
        subprocess.run([*exe, "rag", "index", str(faq), "--collection", "faq"], env=env, check=False)
    open_flag = ["--insecure"] if settings.insecure else []
    children = Children()
    server = children.start("server", [*exe, "serve", "--host", host, "--port", str(port), *open_flag], env)
    url = f"http://{host}:{port}"
    try:
        with console.status("starting the vLLM engine (about 30 s on 2 cores) ..."):
            try:
                wait_healthy(url, server.proc, 600)
            except NotHealthy as e:
                console.print(f"[red]the server did not start:[/] {e}")
                raise typer.Exit(1) from e
        children.start("ui", [*exe, "ui", "--server", url, "--host", host, "--port", str(ui_port), *open_flag], env)
        console.print(f"[bold green]server[/]  {url}/v1   (OpenAI-compatible; try GET {url}/v1/models)")
        console.print(f"[bold green]ui[/]      http://{host}:{ui_port}")
        console.print("Ctrl-C stops both.")
        while True:
            for name in children.check():
                console.print(f"[yellow]the {name} exited; started it again[/]")
            time.sleep(1)
    except ChildFailed as e:
        console.print(f"[red]{e}[/]")
        raise typer.Exit(1) from e
    except KeyboardInterrupt:
        pass
    finally:
        children.stop()
