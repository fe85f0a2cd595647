"""Child processes of loradock's commands, scripts and tests: ports, start, wait for health, stop."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


class NotHealthy(RuntimeError):
    """The server exited or did not answer 200 on /health in time."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def offline_env(**extra: str) -> dict[str, str]:
    """This process's environment with model hubs switched off, plus ``extra``."""
    return {**os.environ, **OFFLINE, **extra}


def wait_healthy(url: str, proc: subprocess.Popen | None = None, timeout: float = 600, interval: float = 1.0,
                 path: str = "/health") -> None:
    """Poll ``url`` + ``path`` until it answers 200; fail early if ``proc`` exits."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise NotHealthy(f"server exited with code {proc.returncode}")
        try:
            if httpx.get(f"{url}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(interval)
    raise NotHealthy(f"server at {url} did not become healthy within {timeout:.0f} s")


def start_logged(cmd: list[str], log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> subprocess.Popen:
    """Start ``cmd`` with stdout and stderr appended to ``log_path``."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env or offline_env(), cwd=cwd)


def stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Terminate ``proc`` (SIGTERM), then kill it if it has not exited after ``timeout`` seconds."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def log_tail(log_path: Path, chars: int = 3000) -> str:
    """The end of a log file (empty if it does not exist)."""
    try:
        return Path(log_path).read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return ""


@contextmanager
def running(cmd: list[str], url: str, log_path: Path, env: dict[str, str] | None = None, timeout_s: float = 600,
            cwd: Path | None = None, health_path: str = "/health") -> Iterator[subprocess.Popen]:
    """Start a server, wait until ``url`` is healthy, yield the process; stop it afterwards.

    A server that exits or does not become healthy raises :class:`NotHealthy` with the log's last lines.
    """
    proc = start_logged(cmd, log_path, env, cwd)
    try:
        try:
            wait_healthy(url, proc, timeout=timeout_s, interval=0.5, path=health_path)
        except NotHealthy as e:
            raise NotHealthy(f"{' '.join(cmd[:4])} ...: {e}; last log lines:\n{log_tail(log_path)}") from e
        yield proc
    finally:
        stop(proc)
