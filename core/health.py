"""Waiting for a server to become healthy (used by the CLI, scripts and tests)."""

from __future__ import annotations

import subprocess
import time


class NotHealthy(RuntimeError):
    """The server exited or did not answer 200 on /health in time."""


def wait_healthy(url: str, proc: subprocess.Popen | None = None, timeout: float = 600, interval: float = 1.0) -> None:
    """Poll ``url``/health until it answers 200; fail early if ``proc`` exits."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise NotHealthy(f"server exited with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(interval)
    raise NotHealthy(f"server at {url} did not become healthy within {timeout:.0f} s")
