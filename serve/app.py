"""The FastAPI application: wiring only. State lives on ``app.state``, built in the lifespan."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from fastapi import FastAPI

from loradock import __version__
from loradock.core.base_model import load_base_info
from loradock.core.settings import Settings
from loradock.core.store import AdapterStore
from loradock.core.template import template_sha256
from loradock.core.validate import ValidationLimits
from loradock.serve.adapters import AdapterRegistry
from loradock.serve.auth import OperatorPaths, operator_keys
from loradock.serve.engine import Engine, VLLMEngine
from loradock.serve.errors import install_error_handlers
from loradock.serve.generation import GenerationService, Retriever
from loradock.serve.limits import BodyLimit
from loradock.serve.metrics import Metrics
from loradock.serve.openapi import install_links
from loradock.serve.routes import adapters as adapter_routes
from loradock.serve.routes import admin, inference, models, system
from loradock.serve.routes import feedback as feedback_routes
from loradock.serve.supervisor import EngineSupervisor

log = logging.getLogger(__name__)


async def _start(app: FastAPI) -> None:
    state = app.state
    settings: Settings = state.settings
    await state.engine.start()
    await state.registry.sync()
    for name in settings.pinned_adapters:
        await state.registry.load(name, None, pin=True, force=False)
    state.watcher = asyncio.create_task(state.registry.watch(settings.store_poll_seconds))
    retriever = state.generation.retriever
    if retriever is not None and hasattr(retriever, "warm"):
        # Load the embedding model in the background so the first RAG request does not pay for it.
        state.warmer = asyncio.create_task(asyncio.to_thread(retriever.warm))
    state.ready = True
    log.info("loradock ready: base %s, %d adapters in %s", settings.served_base_name,
             len(state.registry.names()), settings.adapters_dir)


def _fatal(app: FastAPI, reason: str) -> None:
    """The server cannot serve and will not recover by itself: stop it (exit non-zero when it owns the process)."""
    if getattr(app.state, "exit_reason", None) is None:
        app.state.exit_reason = reason
        if app.state.exit_on_fatal:
            os.kill(os.getpid(), signal.SIGTERM)  # uvicorn shuts down gracefully; the lifespan then exits 1


def _log_start_failure(app: FastAPI, task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("start failed: %r", task.exception())
        _fatal(app, f"start failed: {task.exception()!r}")


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    starter = asyncio.create_task(_start(app))
    starter.add_done_callback(lambda task: _log_start_failure(app, task))
    app.state.starter = starter
    try:
        yield
    finally:
        for task in (starter, getattr(app.state, "watcher", None)):
            if task is not None:
                task.cancel()
                with suppress(asyncio.CancelledError, Exception):
                    await task
        await app.state.engine.shutdown()
        reason = getattr(app.state, "exit_reason", None)
        if reason and app.state.exit_on_fatal:
            log.critical("loradock serve exits: %s", reason)
            logging.shutdown()
            os._exit(1)  # uvicorn would exit 0 (or re-raise SIGTERM); a supervisor must see a failure


def create_app(settings: Settings, engine: Engine | None = None, retriever: Retriever | None = None,
               feedback: object | None = None, exit_on_fatal: bool = False) -> FastAPI:
    """Build the app. ``engine`` defaults to the real vLLM engine; tests may pass a fake.

    The engine runs under an :class:`EngineSupervisor` (restarted when its core dies). ``exit_on_fatal``: the
    app owns its process (``loradock serve``), so an engine that cannot start or keeps dying ends the process
    with exit code 1; otherwise ``app.state.exit_reason`` says why the app stopped serving.
    """
    app = FastAPI(title="loradock", version=__version__, lifespan=_lifespan,
                  description="OpenAI-compatible server: one base model, many hot-swappable LoRA adapters.")
    metrics = Metrics()
    supervised = EngineSupervisor(engine or VLLMEngine(settings), max_restarts=settings.engine_max_restarts,
                                  window_s=settings.engine_restart_window_s, count=metrics.engine_restarts.inc,
                                  on_fatal=lambda reason: _fatal(app, reason))
    engine = supervised
    base = load_base_info(settings.base_model, settings.served_base_name)
    limits = ValidationLimits(max_rank=settings.max_lora_rank, max_bytes=settings.max_adapter_bytes)
    registry = AdapterRegistry(AdapterStore(settings.adapters_dir), base, limits, engine,
                               pinned=set(settings.pinned_adapters), keep_versions=settings.keep_versions,
                               retire_idle_s=settings.retire_idle_s)
    supervised.on_restart = registry.engine_restarted
    state = app.state
    state.settings, state.engine, state.registry, state.metrics = settings, engine, registry, metrics
    state.base, state.template_sha256, state.ready = base, template_sha256(), False
    state.exit_on_fatal, state.exit_reason = exit_on_fatal, None
    state.feedback = feedback
    state.generation = GenerationService(settings, engine, registry, metrics, retriever)
    install_error_handlers(app)
    for module in (system, models, inference, admin, feedback_routes, adapter_routes):
        app.include_router(module.router)
    app.include_router(admin.reader)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    app.add_middleware(OperatorPaths, keys=operator_keys(settings))
    install_links(app, settings)
    return app
