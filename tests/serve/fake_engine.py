"""A deterministic in-process engine for fast routing tests (the real engine is tested elsewhere)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from loradock.serve.engine import ChoiceDelta, GenParams, LoRATarget, Step


class FakeEngine:
    """Echoes which adapter served the request, one word per step; can be slowed or told to fail loads."""

    def __init__(self, tokenizer, delay: float = 0.0) -> None:
        self.tokenizer = tokenizer
        self.delay = delay
        self.resident: dict[int, LoRATarget] = {}
        self.pinned: set[int] = set()
        self.aborted: list[str] = []
        self.fail_loads = False

    async def start(self) -> None:
        return None

    def check(self, params: GenParams) -> None:
        return None

    async def generate(self, prompt_ids: list[int], params: GenParams, request_id: str,
                       lora: LoRATarget | None) -> AsyncIterator[Step]:
        words = [f"[{lora.name if lora else 'base'}]"] + [f" w{i}" for i in range(params.max_tokens - 1)]
        try:
            for i, word in enumerate(words):
                await asyncio.sleep(self.delay)
                last = i == len(words) - 1
                yield Step([ChoiceDelta(0, word, [i], finish_reason="length" if last else None)],
                           prompt_tokens=len(prompt_ids), finished=last)
        except (asyncio.CancelledError, GeneratorExit):
            self.aborted.append(request_id)
            raise

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    async def add_lora(self, lora: LoRATarget) -> None:
        if self.fail_loads:
            raise RuntimeError("simulated load failure")
        self.resident[lora.int_id] = lora

    async def remove_lora(self, int_id: int) -> bool:
        return self.resident.pop(int_id, None) is not None

    async def pin_lora(self, int_id: int) -> None:
        self.pinned.add(int_id)

    async def resident_loras(self) -> set[int]:
        return set(self.resident)

    async def check_health(self) -> None:
        return None

    async def shutdown(self) -> None:
        return None
