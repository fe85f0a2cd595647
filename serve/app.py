"""The FastAPI application: wiring only. State lives on ``app.state``, built in the lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loradock import __version__
from loradock.core.base_model import load_base_info
from loradock.core.settings import Settings
from loradock.core.store import AdapterStore
from loradock.core.template import template_sha256
from loradock.core.validate import ValidationLimits
from loradock.serve.adapters import AdapterRegistry
from loradock.serve.engine import Engine, VLLMEngine
from loradock.serve.errors import PayloadTooLarge, error_response, install_error_handlers
from loradock.serve.generation import GenerationService, Retriever
from loradock.serve.metrics import Metrics
from loradock.serve.routes import adapters as adapter_routes
from loradock.serve.routes import admin, inference, models, system
from loradock.serve.routes import feedback as feedback_routes

log = logging.getLogger(__name__)


class BodyLimit:
    """Refuse request bodies above ``max_bytes`` with an OpenAI-shaped 413, before parsing them."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = PayloadTooLarge(f"request body is larger than this server's limit of {self.max_bytes} bytes",
                                    code="body_too_large")
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await error_response(too_large)(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await error_response(too_large)(scope, receive, send)


class _TooLarge(Exception):
    pass


async def _start(app: FastAPI) -> None:
    state = app.state
    settings: Settings = state.settings
    await state.engine.start()
    state.registry.scan()
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


def _log_start_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("engine start failed: %r", task.exception())


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    starter = asyncio.create_task(_start(app))
    starter.add_done_callback(_log_start_failure)
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


def create_app(settings: Settings, engine: Engine | None = None, retriever: Retriever | None = None,
               feedback: object | None = None) -> FastAPI:
    """Build the app. ``engine`` defaults to the real vLLM engine; tests may pass a fake."""
    app = FastAPI(title="loradock", version=__version__, lifespan=_lifespan,
                  description="OpenAI-compatible server: one base model, many hot-swappable LoRA adapters.")
    engine = engine or VLLMEngine(settings)
    base = load_base_info(settings.base_model, settings.served_base_name)
    limits = ValidationLimits(max_rank=settings.max_lora_rank, max_bytes=settings.max_adapter_bytes)
    registry = AdapterRegistry(AdapterStore(settings.adapters_dir), base, limits, engine,
                               pinned=set(settings.pinned_adapters))
    metrics = Metrics()
    state = app.state
    state.settings, state.engine, state.registry, state.metrics = settings, engine, registry, metrics
    state.base, state.template_sha256, state.ready = base, template_sha256(), False
    state.feedback = feedback
    state.generation = GenerationService(settings, engine, registry, metrics, retriever)
    install_error_handlers(app)
    for module in (system, models, inference, admin, feedback_routes, adapter_routes):
        app.include_router(module.router)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    return app
