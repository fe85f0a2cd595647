"""An engine that heals: the Engine the server uses, delegating to the real one and restarting it when it dies.

vLLM's engine core runs in a child process; when it dies (killed, out of memory, a crash in a step) every
request in flight ends with :class:`EngineUnavailable`, and this supervisor shuts the dead engine down and
builds a fresh one, without a person. Requests meanwhile get 503 with Retry-After. More than
``max_restarts`` restarts within ``window_s`` (a restart that fails counts too) is fatal: ``on_fatal`` is
called with the reason, and the server exits non-zero so that its own supervisor takes over.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, suppress
from typing import Any, Literal

from loradock.serve.engine import Engine, EngineUnavailable, GenParams, LoRATarget, Step

log = logging.getLogger(__name__)
State = Literal["starting", "ready", "restarting", "failed", "stopped"]


class EngineSupervisor:
    """Implements the Engine protocol over ``engine``; see the module docstring."""

    def __init__(self, engine: Engine, *, max_restarts: int = 3, window_s: float = 600.0, poll_s: float = 1.0,
                 on_restart: Callable[[], Awaitable[None]] | None = None,
                 on_fatal: Callable[[str], None] | None = None, count: Callable[[], None] | None = None) -> None:
        self.inner = engine
        self.max_restarts, self.window_s, self.poll_s = max_restarts, window_s, poll_s
        self.on_restart, self.on_fatal, self.count = on_restart, on_fatal, count
        self.state: State = "starting"
        self.reason: str | None = None
        self.restarts = 0
        self._recent: deque[float] = deque()
        self._monitor: asyncio.Task[None] | None = None
        self._restarting: asyncio.Task[None] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)  # anything the engine grows later

    @property
    def tokenizer(self) -> Any:
        return self.inner.tokenizer

    # -- lifecycle --------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the engine the first time; a failure is fatal (the caller learns it from the exception)."""
        try:
            await self.inner.start()
        except Exception as e:
            self._fatal(f"the engine failed to start: {type(e).__name__}: {e}")
            raise
        self.state = "ready"
        self._monitor = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            if self.state != "ready":
                continue
            try:
                await self.inner.check_health()
            except Exception as e:
                log.error("engine health check failed: %r", e)
                self.notice_death()

    def notice_death(self) -> None:
        """The engine core is gone: refuse requests and restart it in the background."""
        if self.state == "ready":
            self.state = "restarting"
            self._restarting = asyncio.get_running_loop().create_task(self._restart())

    async def _restart(self) -> None:
        while True:
            now = time.monotonic()
            while self._recent and now - self._recent[0] > self.window_s:
                self._recent.popleft()
            if len(self._recent) >= self.max_restarts:
                self._fatal(f"the engine died or failed to restart {len(self._recent) + 1} times within "
                            f"{self.window_s:.0f} s; giving up so a supervisor can take over")
                return
            self._recent.append(now)
            self.restarts += 1
            if self.count is not None:
                self.count()
            log.error("engine core is gone: restarting the engine (restart %d)", self.restarts)
            with suppress(Exception):
                await self.inner.shutdown()
            try:
                await self.inner.start()
            except Exception:
                log.exception("engine restart failed")
                await asyncio.sleep(min(2.0 * len(self._recent), 10.0))
                continue
            self.state = "ready"
            log.info("engine restarted; serving again")
            if self.on_restart is not None:
                try:
                    await self.on_restart()
                except Exception:
                    log.exception("after the engine restart")
            return

    def _fatal(self, reason: str) -> None:
        self.state, self.reason = "failed", reason
        log.critical("%s", reason)
        if self.on_fatal is not None:
            self.on_fatal(reason)

    async def shutdown(self) -> None:
        self.state = "stopped"
        for task in (self._monitor, self._restarting):
            if task is not None:
                task.cancel()
                with suppress(asyncio.CancelledError, Exception):
                    await task
        await self.inner.shutdown()

    # -- the Engine protocol ----------------------------------------------------------------------------
    @property
    def serving(self) -> bool:
        """False while the engine restarts, after it failed for good, and after shutdown. (While it first
        starts, calls reach the engine, which refuses them itself until it is up.)"""
        return self.state in ("starting", "ready")

    def _ready(self) -> None:
        if not self.serving:
            raise EngineUnavailable(f"the engine is {self.state}; retry in a few seconds")

    def check(self, params: GenParams) -> None:
        self._ready()
        self.inner.check(params)

    async def generate(self, prompt_ids: list[int], params: GenParams, request_id: str,
                       lora: LoRATarget | None) -> AsyncIterator[Step]:
        self._ready()
        try:
            async with aclosing(self.inner.generate(prompt_ids, params, request_id, lora)) as steps:
                async for step in steps:
                    yield step
        except EngineUnavailable:
            self.notice_death()
            raise

    async def _guarded(self, call: Awaitable[Any]) -> Any:
        try:
            return await call
        except EngineUnavailable:
            self.notice_death()
            raise

    async def abort(self, request_id: str) -> None:
        if self.serving:
            with suppress(EngineUnavailable):
                await self._guarded(self.inner.abort(request_id))

    async def add_lora(self, lora: LoRATarget) -> None:
        self._ready()
        await self._guarded(self.inner.add_lora(lora))

    async def remove_lora(self, int_id: int) -> bool:
        if not self.serving:
            return False  # a dead or new engine holds no adapters
        return bool(await self._guarded(self.inner.remove_lora(int_id)))

    async def pin_lora(self, int_id: int) -> None:
        self._ready()
        await self._guarded(self.inner.pin_lora(int_id))

    async def resident_loras(self) -> set[int]:
        if not self.serving:
            return set()
        try:
            return set(await self._guarded(self.inner.resident_loras()))
        except EngineUnavailable:
            return set()

    async def check_health(self) -> None:
        self._ready()
        await self._guarded(self.inner.check_health())
