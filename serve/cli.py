"""`loradock serve`, `loradock demo` and `loradock bench` (the RAG group lives in rag_cli.py)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import typer

from loradock.bench.run import bench_cmd
from loradock.rag.cli import rag_app

__all__ = ["bench_cmd", "demo_cmd", "rag_app", "serve_cmd"]
log = logging.getLogger(__name__)


def serve_cmd(
    host: str = typer.Option(None, help="Bind address (default 127.0.0.1; 0.0.0.0 in Docker)."),
    port: int = typer.Option(None, help="Port (default 8000)."),
    config: Path = typer.Option(None, "--config", help="YAML settings file."),
    base_model: Path = typer.Option(None, help="Local HF model folder to serve as the base."),
    adapters_dir: Path = typer.Option(None, help="Adapter store root (watched for new adapters)."),
    max_loras: int = typer.Option(None, help="Adapters in one batch."),
    max_cpu_loras: int = typer.Option(None, help="Adapters resident before LRU eviction."),
    max_lora_rank: int = typer.Option(None, help="Largest adapter rank accepted."),
    max_model_len: int = typer.Option(None, help="Context length (prompt + max_tokens)."),
    gpu_memory_utilization: float = typer.Option(None, help="Memory fraction (NUMA node on CPU)."),
    dtype: str = typer.Option(None, help="bfloat16 | float16 | float32."),
    tensor_parallel_size: int = typer.Option(None, help="vLLM tensor parallelism (GPUs)."),
    pipeline_parallel_size: int = typer.Option(None, help="vLLM pipeline parallelism."),
    pin: list[str] = typer.Option(None, "--pin", help="Adapter to load at start and never evict (repeatable)."),
) -> None:
    """Run the OpenAI-compatible server: one base model, adapters chosen per request by `model`."""
    import uvicorn

    from loradock.core.settings import load_settings
    from loradock.serve.app import create_app

    settings = load_settings(
        config, host=host, port=port, base_model=base_model, adapters_dir=adapters_dir, max_loras=max_loras,
        max_cpu_loras=max_cpu_loras, max_lora_rank=max_lora_rank, max_model_len=max_model_len,
        gpu_memory_utilization=gpu_memory_utilization, dtype=dtype, tensor_parallel_size=tensor_parallel_size,
        pipeline_parallel_size=pipeline_parallel_size, pinned_adapters=pin or None)
    from loradock.core.feedback import FeedbackStore
    from loradock.rag.index import RagStore

    _check_port_free(settings.host, settings.port)  # before the engine starts, not after 30 s of loading
    app = create_app(settings, retriever=RagStore(settings.rag_dir), feedback=FeedbackStore(settings.db_url))
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", timeout_graceful_shutdown=5)


def _check_port_free(host: str, port: int) -> None:
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            raise typer.BadParameter(f"{host}:{port} is in use ({e.strerror}); stop what runs there or pick "
                                     "another --port", param_hint="--port") from e


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
                raise typer.Exit(str(e)) from e
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
