"""`loradock serve`: the OpenAI-compatible server over a vLLM engine."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

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
    replicas: int = typer.Option(0, "--replicas", min=0, help="Run N full servers as Ray Serve replicas behind one "
                                 "adapter-aware endpoint (needs `make setup RAY=1`); 0: this process only."),
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
    if replicas:
        from loradock.serve.replicas.run import serve_replicas

        serve_replicas(settings, replicas)
        return
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
