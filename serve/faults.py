"""Tests only: an engine wrapper that fails chosen requests mid-generation (LORADOCK_TEST_FAULT_MARKER).

The real server's streaming path (engine, SSE loop, metrics, admission, abort) is then exercised with an
engine failure on demand, without killing the engine that the rest of the test session shares.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from loradock.serve.engine import Engine, GenParams, LoRATarget, Step


class InjectedFault(RuntimeError):
    """The failure :class:`FaultInjector` raises."""


class FaultInjector:
    """Delegates to ``engine``; a prompt whose text contains ``marker`` fails after ``after_steps`` steps (or
    instead of its last step, whichever comes first)."""

    def __init__(self, engine: Engine, marker: str, after_steps: int = 3) -> None:
        self.engine, self.marker, self.after_steps = engine, marker, after_steps

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)  # anything the engine grows later

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    async def start(self) -> None:
        await self.engine.start()

    def check(self, params: GenParams) -> None:
        self.engine.check(params)

    async def generate(self, prompt_ids: list[int], params: GenParams, request_id: str,
                       lora: LoRATarget | None) -> AsyncIterator[Step]:
        armed = self.marker in self.tokenizer.decode(prompt_ids)
        async with aclosing(self.engine.generate(prompt_ids, params, request_id, lora)) as steps:
            done = 0
            async for step in steps:
                if armed and (done >= self.after_steps or step.finished):  # a FINAL_ONLY run has one step
                    raise InjectedFault(f"injected engine failure after {done} steps ({request_id})")
                done += 1
                yield step

    async def abort(self, request_id: str) -> None:
        await self.engine.abort(request_id)

    async def add_lora(self, lora: LoRATarget) -> None:
        await self.engine.add_lora(lora)

    async def remove_lora(self, int_id: int) -> bool:
        return await self.engine.remove_lora(int_id)

    async def pin_lora(self, int_id: int) -> None:
        await self.engine.pin_lora(int_id)

    async def resident_loras(self) -> set[int]:
        return await self.engine.resident_loras()

    async def check_health(self) -> None:
        await self.engine.check_health()

    async def shutdown(self) -> None:
        await self.engine.shutdown()
