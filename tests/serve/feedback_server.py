"""The real loradock app (create_app, settings from LORADOCK_*) with an engine that never generates.

Run by test_feedback_api.py under uvicorn in a subprocess (`--factory tests.serve.feedback_server:build`),
so the feedback path can be killed and restarted in a second instead of the 30 s a vLLM start takes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from loradock.core.feedback import FeedbackStore
from loradock.core.settings import load_settings
from loradock.serve.app import create_app


class IdleEngine:
    """Satisfies serve.engine.Engine; feedback requests never reach an engine."""

    tokenizer: Any = None

    async def start(self) -> None:
        return None

    async def generate(self, *_: Any, **__: Any) -> AsyncIterator[Any]:
        raise RuntimeError("IdleEngine does not generate")
        yield

    async def abort(self, request_id: str) -> None:
        return None

    async def add_lora(self, lora: Any) -> None:
        return None

    async def remove_lora(self, int_id: int) -> bool:
        return False

    async def pin_lora(self, int_id: int) -> None:
        return None

    async def resident_loras(self) -> set[int]:
        return set()

    async def check_health(self) -> None:
        return None

    async def shutdown(self) -> None:
        return None


def build() -> FastAPI:
    """uvicorn factory: the production app wiring, with the idle engine."""
    settings = load_settings()
    return create_app(settings, engine=IdleEngine(), feedback=FeedbackStore(settings.db_url))
