"""`loradock serve`: the OpenAI-compatible server over a vLLM engine."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Any

import typer

from loradock.core.settings import Settings

log = logging.getLogger(__name__)

# h11's own default; stated so the limit is documented and tested (docs/deploy.md).
MAX_HEADER_BYTES = 16 * 1024


def serve_cmd(
    host: str = typer.Option(None, help="Bind address (default 127.0.0.1). A non-loopback address needs "
                                        "LORADOCK_API_KEY and LORADOCK_ADMIN_KEY, or --insecure."),
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
    insecure: bool = typer.Option(False, "--insecure", help="Serve a non-loopback address without keys "
                                                           "(LORADOCK_INSECURE=1): anyone who reaches it is admin."),
    replicas: int = typer.Option(0, "--replicas", min=0, help="Run N full servers as Ray Serve replicas behind one "
                                 "adapter-aware endpoint (needs `make setup RAY=1`); 0: this process only."),
) -> None:
    """Run the OpenAI-compatible server: one base model, adapters chosen per request by `model`."""
    import uvicorn

    from loradock.core.settings import load_settings

    settings = load_settings(
        config, host=host, port=port, base_model=base_model, adapters_dir=adapters_dir, max_loras=max_loras,
        max_cpu_loras=max_cpu_loras, max_lora_rank=max_lora_rank, max_model_len=max_model_len,
        gpu_memory_utilization=gpu_memory_utilization, dtype=dtype, tensor_parallel_size=tensor_parallel_size,
        pipeline_parallel_size=pipeline_parallel_size, pinned_adapters=pin or None, insecure=insecure or None)
    refuse_open_bind(settings)
    _check_port_free(settings.host, settings.port)  # before the engine starts, not after 30 s of loading
    if replicas:
        from loradock.serve.replicas.run import serve_replicas

        serve_replicas(settings, replicas)
        return
    uvicorn.run(build_app(settings), **uvicorn_options(settings))


def build_app(settings: Settings) -> Any:
    """The production app: the vLLM engine (wrapped by the test fault hook when configured), RAG, feedback."""
    from loradock.core.feedback import FeedbackStore
    from loradock.rag.index import RagStore
    from loradock.serve.app import create_app
    from loradock.serve.engine import VLLMEngine
    from loradock.serve.faults import FaultInjector

    engine: Any = VLLMEngine(settings)
    if settings.test_fault_marker:
        log.warning("test fault injection is on: prompts containing %r fail mid-generation",
                    settings.test_fault_marker)
        engine = FaultInjector(engine, settings.test_fault_marker)
    return create_app(settings, engine=engine, retriever=RagStore(settings.rag_dir),
                      feedback=FeedbackStore(settings.db_url), exit_on_fatal=True)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn settings: h11 with a header read deadline, bounded header size, keep-alive timeout."""
    from loradock.serve.limits import timed_h11

    return {"host": settings.host, "port": settings.port, "log_level": "info", "timeout_graceful_shutdown": 5,
            "http": timed_h11(settings.header_timeout_s), "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
            "timeout_keep_alive": settings.keep_alive_s}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname: it may resolve to anything


def refuse_open_bind(settings: Settings, flag: str = "--insecure") -> None:
    """Refuse a non-loopback bind without API and admin keys unless told it is meant (``insecure``)."""
    missing = [name for name, key in (("LORADOCK_API_KEY", settings.api_key), ("LORADOCK_ADMIN_KEY",
                                                                              settings.admin_key)) if key is None]
    if not missing or settings.insecure or is_loopback(settings.host):
        return
    raise typer.BadParameter(
        f"refusing to serve on {settings.host} without {' and '.join(missing)}: anyone who can reach this "
        f"address could use and administer the server. Set the key(s), bind 127.0.0.1, or pass {flag} "
        "(LORADOCK_INSECURE=1) if that is what you want.", param_hint="--host")


def _check_port_free(host: str, port: int) -> None:
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            raise typer.BadParameter(f"{host}:{port} is in use ({e.strerror}); stop what runs there or pick "
                                     "another --port", param_hint="--port") from e
