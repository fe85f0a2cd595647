"""What chat and text completions share: model resolution, limits, admission, running the engine, SSE.

Each endpoint prepares its request and gives its wire format (serve/chat.py, serve/completions.py);
:class:`GenerationService` speaks the engine's small types.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from loradock.core.settings import Settings
from loradock.serve.adapters import AdapterRegistry
from loradock.serve.engine import ChoiceDelta, Engine, GenParams, LoRATarget, Step
from loradock.serve.errors import APIError, BadRequest, NotFound, TooManyRequests
from loradock.serve.metrics import Metrics
from loradock.serve.schemas import (
    Passage,
    SamplingFields,
    new_id,
    now,
    usage,
)

log = logging.getLogger(__name__)


class Retriever(Protocol):
    def retrieve(self, collection: str, query: str, top_k: int) -> list[Passage]: ...


class Wire(Protocol):
    """One endpoint's response shapes (chat.py, completions.py); built per request, may keep stream state."""

    endpoint: str  # the metrics label
    id_prefix: str
    chunk_object: str

    def __init__(self, prep: Prepared) -> None: ...
    def body(self, choices: list[ChoiceDelta], use: dict[str, int]) -> dict[str, Any]: ...
    def preamble(self) -> list[dict[str, Any]]: ...
    def chunk_choice(self, c: ChoiceDelta) -> dict[str, Any]: ...


@dataclass
class Prepared:
    model: str
    lora: LoRATarget | None
    prompt_ids: list[int]
    params: GenParams
    top_logprobs: int | None = None
    passages: list[Passage] | None = None
    request_id: str = field(default_factory=lambda: new_id("req"))


class Admission:
    """Bounded in-flight requests: past running + waiting capacity, refuse with 429 and Retry-After."""

    def __init__(self, capacity: int, metrics: Metrics) -> None:
        self.capacity, self.metrics = capacity, metrics
        self.in_flight = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Callable[[], None]]:
        if self.in_flight >= self.capacity:
            self.metrics.rejected.labels("queue_full").inc()
            raise TooManyRequests(
                f"server is at capacity ({self.capacity} requests in flight); retry shortly",
                code="queue_full", headers={"Retry-After": "1"})
        self.in_flight += 1
        self.metrics.waiting.inc()
        started = False

        def first_token() -> None:
            nonlocal started
            if not started:
                started = True
                self.metrics.waiting.dec()
                self.metrics.running.inc()

        try:
            yield first_token
        finally:
            self.in_flight -= 1
            if started:
                self.metrics.running.dec()
            else:
                self.metrics.waiting.dec()


class GenerationService:
    def __init__(self, settings: Settings, engine: Engine, registry: AdapterRegistry, metrics: Metrics,
                 retriever: Retriever | None = None) -> None:
        self.settings, self.engine, self.registry, self.metrics = settings, engine, registry, metrics
        self.retriever = retriever
        self.admission = Admission(settings.max_num_seqs + settings.max_waiting, metrics)

    # -- preparation ------------------------------------------------------------------------------------
    async def resolve(self, model: str) -> LoRATarget | None:
        if model == self.settings.served_base_name:
            return None
        try:
            return await self.registry.acquire(model)
        except NotFound as e:
            valid = [self.settings.served_base_name, *self.registry.names()]
            raise NotFound(f"{e.message}; valid models: {', '.join(valid)}", param="model",
                           code="model_not_found") from e

    def params(self, req: SamplingFields, prompt_len: int, max_tokens: int | None,
                logprobs: int | None) -> GenParams:
        s = self.settings
        if req.n > s.max_n:
            raise BadRequest(f"n={req.n} is above this server's limit {s.max_n}", param="n")
        if max_tokens is not None and max_tokens > s.max_tokens_cap:
            raise BadRequest(f"max_tokens={max_tokens} is above this server's cap {s.max_tokens_cap}; "
                             "ask for fewer tokens", param="max_tokens", code="max_tokens_too_large")
        room = s.max_model_len - prompt_len
        if max_tokens is None:
            if room <= 0:
                raise BadRequest(f"this model's maximum context length is {s.max_model_len} tokens, but the "
                                 f"prompt has {prompt_len} tokens; shorten the messages",
                                 param="messages", code="context_length_exceeded")
            max_tokens = min(s.default_max_tokens, room)
        elif prompt_len + max_tokens > s.max_model_len:
            raise BadRequest(
                f"this model's maximum context length is {s.max_model_len} tokens, but you requested "
                f"{prompt_len + max_tokens} tokens ({prompt_len} in the prompt, {max_tokens} for max_tokens); "
                "shorten the prompt or lower max_tokens", param="max_tokens", code="context_length_exceeded")
        return GenParams(
            max_tokens=max_tokens, temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p, n=req.n, stop=req.stop, seed=req.seed,
            logprobs=logprobs, presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
            ignore_eos=req.ignore_eos, stream=req.stream)

    # -- running ----------------------------------------------------------------------------------------
    async def _steps(self, prep: Prepared, first_token: Callable[[], None]) -> AsyncIterator[Step]:
        started = time.perf_counter()
        produced = 0
        try:
            async for step in self.engine.generate(prep.prompt_ids, prep.params, prep.request_id, prep.lora):
                new = sum(len(c.token_ids) for c in step.choices)
                if new and not produced:
                    first_token()
                    self.metrics.ttft.labels(prep.model).observe(time.perf_counter() - started)
                produced += new
                yield step
        finally:
            self.metrics.prompt_tokens.labels(prep.model).inc(len(prep.prompt_ids))
            self.metrics.generation_tokens.labels(prep.model).inc(produced)
            self.metrics.latency.labels(prep.model).observe(time.perf_counter() - started)

    async def _collect(self, prep: Prepared, first_token: Callable[[], None]) -> tuple[list[ChoiceDelta], int]:
        merged: dict[int, ChoiceDelta] = {}
        prompt_tokens = len(prep.prompt_ids)
        async for step in self._steps(prep, first_token):
            prompt_tokens = step.prompt_tokens
            for c in step.choices:
                m = merged.setdefault(c.index, ChoiceDelta(c.index, "", [], [] if c.logprobs is not None else None))
                m.text += c.text
                m.token_ids += c.token_ids
                if c.logprobs is not None and m.logprobs is not None:
                    m.logprobs += c.logprobs
                m.finish_reason = c.finish_reason or m.finish_reason
        return [merged[i] for i in sorted(merged)], prompt_tokens

    async def _collect_unless_disconnected(self, prep: Prepared, request: Request,
                                           first_token: Callable[[], None]) -> tuple[list[ChoiceDelta], int]:
        """Non-streaming run that aborts the engine request if the client goes away."""
        task = asyncio.ensure_future(self._collect(prep, first_token))
        while not task.done():
            done, _ = await asyncio.wait({task}, timeout=0.5)
            if not done and await request.is_disconnected():
                task.cancel()
                log.info("client disconnected; aborted %s", prep.request_id)
                raise asyncio.CancelledError
        return task.result()

    async def run(self, wire_type: type[Wire], prep: Prepared, request: Request) -> Any:
        """Execute a prepared request: a JSON body, or an SSE stream, in ``wire_type``'s shapes."""
        wire = wire_type(prep)
        if prep.params.stream:
            include_usage = bool(getattr(request.state, "include_usage", False))
            cm = self.admission.slot()
            first_token = await cm.__aenter__()
            stream = self._sse(wire, prep, first_token, include_usage, cm)
            return StreamingResponse(stream, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        async with self.admission.slot() as first_token:
            try:
                choices, prompt_tokens = await self._collect_unless_disconnected(prep, request, first_token)
            except APIError:
                self.metrics.requests.labels(prep.model, wire.endpoint, "error").inc()
                raise
        self.metrics.requests.labels(prep.model, wire.endpoint, "ok").inc()
        completion_tokens = sum(len(c.token_ids) for c in choices)
        return JSONResponse(wire.body(choices, usage(prompt_tokens, completion_tokens)))

    async def _sse(self, wire: Wire, prep: Prepared, first_token: Callable[[], None], include_usage: bool,
                   slot: Any) -> AsyncIterator[str]:
        cid, created = new_id(wire.id_prefix), now()
        prompt_tokens, completion_tokens, status = len(prep.prompt_ids), 0, "ok"

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
            payload = {"id": cid, "object": wire.chunk_object, "created": created, "model": prep.model,
                       "choices": choices}
            payload.update(extra)
            return f"data: {json.dumps(payload)}\n\n"

        try:
            for extra in wire.preamble():
                yield chunk([], **extra)
            async for step in self._steps(prep, first_token):
                prompt_tokens = step.prompt_tokens
                completion_tokens += sum(len(c.token_ids) for c in step.choices)
                out = [wire.chunk_choice(c) for c in step.choices]
                if out:
                    yield chunk(out)
            if include_usage:
                yield chunk([], usage=usage(prompt_tokens, completion_tokens))
            yield "data: [DONE]\n\n"
        except APIError as e:
            status = "error"
            yield f"data: {json.dumps(e.body())}\n\n"
        except asyncio.CancelledError:
            status = "aborted"
            log.info("client disconnected mid-stream; aborted %s", prep.request_id)
            raise
        finally:
            self.metrics.requests.labels(prep.model, wire.endpoint, status).inc()
            await slot.__aexit__(None, None, None)
