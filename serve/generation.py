"""What chat and text completions share: model resolution, limits, admission, running the engine, SSE.

Each endpoint prepares its request and gives its wire format (serve/chat.py, serve/completions.py);
:class:`GenerationService` speaks the engine's small types. A request's resources (its admission slot, its
adapter) live in one :class:`~contextlib.AsyncExitStack`: closed when a JSON answer is built, and owned by
the streaming response otherwise, so a stream released however it ends (finished, failed, abandoned).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from loradock.core.settings import Settings
from loradock.serve.adapters import AdapterRegistry
from loradock.serve.engine import ChoiceDelta, Engine, GenParams, LoRATarget, ParamsRejected, Step
from loradock.serve.errors import APIError, BadRequest, NotFound, ServerError, TooManyRequests, Unavailable
from loradock.serve.metrics import Metrics
from loradock.serve.schemas import Passage, SamplingFields, new_id, now, usage

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_LISTED_MODELS = 20


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
    echo: str | None = None  # completions: prompt text put before each choice's text
    include_usage: bool = False
    request_id: str = field(default_factory=lambda: new_id("req"))
    streamed: bool = False  # the SSE body started (a stream abandoned before that is counted by its response)


class EngineFailed(RuntimeError):
    """The engine reported an internal error for a request (finish_reason 'error')."""


class Slot:
    """One admitted request; counts as waiting until its first token, then running. release() is idempotent."""

    def __init__(self, admission: Admission) -> None:
        self.admission, self.started, self.released = admission, False, False

    def first_token(self) -> None:
        if not self.started and not self.released:
            self.started = True
            self.admission.metrics.waiting.dec()
            self.admission.metrics.running.inc()

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        self.admission.in_flight -= 1
        (self.admission.metrics.running if self.started else self.admission.metrics.waiting).dec()


class Admission:
    """Bounded in-flight requests: past running + waiting capacity, refuse with 429 and Retry-After."""

    def __init__(self, capacity: int, metrics: Metrics) -> None:
        self.capacity, self.metrics = capacity, metrics
        self.in_flight = 0

    def admit(self) -> Slot:
        if self.in_flight >= self.capacity:
            self.metrics.rejected.labels("queue_full").inc()
            raise TooManyRequests(
                f"server is at capacity ({self.capacity} requests in flight); retry shortly",
                code="queue_full", headers={"Retry-After": "1"})
        self.in_flight += 1
        self.metrics.waiting.inc()
        return Slot(self)


def as_api_error(exc: BaseException) -> APIError:
    """What a client is told about an exception raised while preparing or generating."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ParamsRejected):
        return BadRequest(str(exc), param=exc.param, code="invalid_parameter")
    if any(c.__name__ == "EngineDeadError" for c in type(exc).__mro__):  # vLLM's, if one gets past the engine
        return Unavailable("the engine is not available (stopped or restarting); retry in a few seconds",
                           code="engine_unavailable", headers={"Retry-After": "5"})
    return ServerError("the engine failed on this request; retry, and report it if it keeps failing",
                       code="engine_error")


class OwnedStream(StreamingResponse):
    """An SSE response that owns its request's resources and releases them when the response ends,
    whether the stream finished, failed, or was abandoned before it was ever iterated."""

    def __init__(self, content: AsyncIterator[str], resources: AsyncExitStack, on_end: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.resources, self.on_end = resources, on_end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                with suppress(Exception):
                    await aclose()
            self.on_end()
            await self.resources.aclose()


class GenerationService:
    def __init__(self, settings: Settings, engine: Engine, registry: AdapterRegistry, metrics: Metrics,
                 retriever: Retriever | None = None) -> None:
        self.settings, self.engine, self.registry, self.metrics = settings, engine, registry, metrics
        self.retriever = retriever
        self.admission = Admission(settings.max_num_seqs + settings.max_waiting, metrics)
        # Templating, tokenizing and vLLM's parameter checks: CPU work kept off the event loop, one at a time
        # (the fast tokenizer is not meant to be shared between threads).
        self._cpu = ThreadPoolExecutor(1, thread_name_prefix="loradock-prepare")
        weakref.finalize(self, self._cpu.shutdown, wait=False)

    async def off_loop(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._cpu, fn)

    # -- preparation ------------------------------------------------------------------------------------
    async def resolve(self, model: str, resources: AsyncExitStack) -> LoRATarget | None:
        """The adapter for ``model`` (None for the base), held until ``resources`` close."""
        if model == self.settings.served_base_name:
            return None
        try:
            return await resources.enter_async_context(self.registry.use(model))
        except NotFound as e:
            valid = [self.settings.served_base_name, *self.registry.names()]
            listed = ", ".join(valid[:MAX_LISTED_MODELS])
            more = f" and {len(valid) - MAX_LISTED_MODELS} more (GET /v1/models)" if len(valid) > MAX_LISTED_MODELS \
                else ""
            raise NotFound(f"{e.message}; valid models: {listed}{more}", param="model",
                           code="model_not_found") from e

    def params(self, req: SamplingFields, prompt_len: int, max_tokens: int | None, logprobs: int | None,
               structured: dict[str, Any] | None = None) -> GenParams:
        """Engine parameters for ``req``, with every limit checked; then vLLM's own checks (engine.check)."""
        s, n = self.settings, req.n_choices
        if n > s.max_n:
            raise BadRequest(f"n={n} is above this server's limit {s.max_n}", param="n")
        temperature = 1.0 if req.temperature is None else req.temperature
        if n > 1 and temperature == 0:
            # vLLM's SamplingParams refuses it too: n greedy samples would be n copies of one answer.
            raise BadRequest(f"n={n} needs sampling: with temperature 0 every choice would be the same; set "
                             "temperature above 0 or n to 1", param="n", code="invalid_parameter")
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
        if req.min_tokens > max_tokens:
            raise BadRequest(f"min_tokens={req.min_tokens} is above max_tokens={max_tokens}", param="min_tokens")
        vocab = len(self.engine.tokenizer)
        for name, ids in (("logit_bias", [int(k) for k in req.logit_bias or {}]),
                          ("stop_token_ids", req.stop_token_ids or [])):
            outside = [i for i in ids if i >= vocab]
            if outside:
                raise BadRequest(f"{name} has token ids outside the vocabulary (0-{vocab - 1}): {outside[:5]}",
                                 param=name)
        params = GenParams(
            max_tokens=max_tokens, temperature=temperature, top_p=1.0 if req.top_p is None else req.top_p, n=n,
            stop=req.stop, seed=req.seed, logprobs=logprobs, presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0, ignore_eos=req.ignore_eos, stream=bool(req.stream),
            top_k=0 if req.top_k is None or req.top_k >= vocab else req.top_k, min_p=req.min_p or 0.0,
            repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
            min_tokens=req.min_tokens, stop_token_ids=req.stop_token_ids,
            logit_bias={int(k): v for k, v in req.logit_bias.items()} if req.logit_bias else None,
            include_stop_str_in_output=req.include_stop_str_in_output, skip_special_tokens=req.skip_special_tokens,
            spaces_between_special_tokens=req.spaces_between_special_tokens, structured=structured)
        try:
            self.engine.check(params)
        except ParamsRejected as e:
            if e.param is None and structured is not None and self._accepted(replace(params, structured=None)):
                raise ParamsRejected(str(e), "response_format") from e  # the grammar was what vLLM refused
            raise
        return params

    def _accepted(self, params: GenParams) -> bool:
        try:
            self.engine.check(params)
        except ParamsRejected:
            return False
        return True

    # -- running ----------------------------------------------------------------------------------------
    async def handle(self, wire_type: type[Wire], req: SamplingFields, request: Request,
                     prepare: Callable[[GenerationService, Any, AsyncExitStack], Awaitable[Prepared]]) -> Response:
        """Admit, prepare (inside the admission slot) and run one request: a JSON body or an SSE stream."""
        refused = req.refusals()
        if refused is not None:
            raise BadRequest(refused[1], param=refused[0], code="unsupported_parameter")
        resources, streaming = AsyncExitStack(), False
        try:
            slot = self.admission.admit()
            resources.callback(slot.release)
            try:
                prep = await prepare(self, req, resources)
            except ParamsRejected as e:  # vLLM's own checks refused the sampling parameters
                raise as_api_error(e) from e
            wire = wire_type(prep)
            if prep.params.stream:
                streaming = True  # from here the response owns the resources

                def counted_if_never_started() -> None:
                    if not prep.streamed:
                        self.metrics.requests.labels(prep.model, wire.endpoint, "aborted").inc()

                return OwnedStream(self._sse(wire, prep, slot), resources, counted_if_never_started)
            choices, prompt_tokens = await self._collect_unless_disconnected(wire, prep, request, slot)
        finally:
            if not streaming:
                await resources.aclose()
        completion_tokens = sum(len(c.token_ids) for c in choices)
        return JSONResponse(wire.body(choices, usage(prompt_tokens, completion_tokens)))

    async def _steps(self, prep: Prepared, slot: Slot) -> AsyncIterator[Step]:
        started = time.perf_counter()
        produced = 0
        steps = self.engine.generate(prep.prompt_ids, prep.params, prep.request_id, prep.lora)
        try:
            async for step in steps:
                new = sum(len(c.token_ids) for c in step.choices)
                if new and not produced:
                    slot.first_token()
                    self.metrics.ttft.labels(prep.model).observe(time.perf_counter() - started)
                produced += new
                if any(c.finish_reason == "error" for c in step.choices):
                    raise EngineFailed(f"the engine reported an internal error for {prep.request_id}")
                yield step
        finally:
            # Close the engine's iterator now, not at garbage collection: vLLM aborts an unfinished request.
            aclose = getattr(steps, "aclose", None)
            if aclose is not None:
                with suppress(Exception):
                    await aclose()
            self.metrics.prompt_tokens.labels(prep.model).inc(len(prep.prompt_ids))
            self.metrics.generation_tokens.labels(prep.model).inc(produced)
            self.metrics.latency.labels(prep.model).observe(time.perf_counter() - started)

    async def _collect(self, prep: Prepared, slot: Slot) -> tuple[list[ChoiceDelta], int]:
        merged: dict[int, ChoiceDelta] = {}
        prompt_tokens = len(prep.prompt_ids)
        async for step in self._steps(prep, slot):
            prompt_tokens = step.prompt_tokens
            for c in step.choices:
                m = merged.setdefault(c.index, ChoiceDelta(c.index, "", [], [] if c.logprobs is not None else None))
                m.text += c.text
                m.token_ids += c.token_ids
                if c.logprobs is not None and m.logprobs is not None:
                    m.logprobs += c.logprobs
                m.finish_reason = c.finish_reason or m.finish_reason
        return [merged[i] for i in sorted(merged)], prompt_tokens

    async def _collect_unless_disconnected(self, wire: Wire, prep: Prepared, request: Request,
                                           slot: Slot) -> tuple[list[ChoiceDelta], int]:
        """Non-streaming run that aborts the engine request if the client goes away; counted either way."""
        status = "ok"
        task = asyncio.ensure_future(self._collect(prep, slot))
        try:
            while not task.done():
                done, _ = await asyncio.wait({task}, timeout=0.5)
                if not done and await request.is_disconnected():
                    log.info("client disconnected; aborted %s", prep.request_id)
                    raise asyncio.CancelledError
            return task.result()
        except asyncio.CancelledError:
            status = "aborted"
            raise
        except Exception as e:
            status = "error"
            err = as_api_error(e)
            if err.status >= 500:
                log.error("request %s failed in the engine: %r", prep.request_id, e)
            raise err from e
        finally:
            if not task.done():
                task.cancel()
                with suppress(asyncio.CancelledError, Exception):
                    await task
            self.metrics.requests.labels(prep.model, wire.endpoint, status).inc()

    async def _sse(self, wire: Wire, prep: Prepared, slot: Slot) -> AsyncIterator[str]:
        prep.streamed = True
        cid, created = new_id(wire.id_prefix), now()
        prompt_tokens, completion_tokens, status = len(prep.prompt_ids), 0, "ok"
        head = f'{{"id": "{cid}", "object": "{wire.chunk_object}", "created": {created}, ' \
               f'"model": {json.dumps(prep.model)}, "choices": '

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
            tail = "".join(f", {json.dumps(k)}: {json.dumps(v)}" for k, v in extra.items())
            return f"data: {head}{json.dumps(choices)}{tail}}}\n\n"

        try:
            for extra in wire.preamble():
                yield chunk([], **extra)
            async for step in self._steps(prep, slot):
                prompt_tokens = step.prompt_tokens
                completion_tokens += sum(len(c.token_ids) for c in step.choices)
                out = [wire.chunk_choice(c) for c in step.choices]
                if out:
                    yield chunk(out)
            if prep.include_usage:
                yield chunk([], usage=usage(prompt_tokens, completion_tokens))
            yield "data: [DONE]\n\n"
        except (asyncio.CancelledError, GeneratorExit):
            status = "aborted"
            log.info("client disconnected mid-stream; aborted %s", prep.request_id)
            raise
        except Exception as e:
            # As vLLM's server does: an OpenAI-shaped error event, then [DONE]; the client raises APIError.
            status = "error"
            err = as_api_error(e)
            log.error("stream %s failed: %r", prep.request_id, e)
            yield f"data: {json.dumps(err.body())}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            self.metrics.requests.labels(prep.model, wire.endpoint, status).inc()
