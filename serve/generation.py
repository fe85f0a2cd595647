"""Chat and text completions: resolve the model, render through core's template, check limits, run.

Routes call :class:`GenerationService`; it speaks the engine's small types and the OpenAI wire format.
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
from loradock.core.template import TemplateError, encode
from loradock.serve.adapters import AdapterRegistry
from loradock.serve.engine import ChoiceDelta, Engine, GenParams, LoRATarget, Step, TokenLogprob
from loradock.serve.errors import APIError, BadRequest, NotFound, TooManyRequests
from loradock.serve.metrics import Metrics
from loradock.serve.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    Passage,
    SamplingFields,
    new_id,
    now,
    passages_json,
    usage,
)

log = logging.getLogger(__name__)
RAG_INSTRUCTION = "Answer the question using the numbered passages below. Cite the passage you use like [1]."


class Retriever(Protocol):
    def retrieve(self, collection: str, query: str, top_k: int) -> list[Passage]: ...


def with_passages(messages: list[dict[str, str]], passages: list[Passage]) -> list[dict[str, str]]:
    """Put numbered passages into the last user turn (small models use context next to the question best)."""
    context = "\n".join(f"[{i}] ({p.source}) {p.text}" for i, p in enumerate(passages, 1))
    out = [dict(m) for m in messages]
    last_user = max(i for i, m in enumerate(out) if m["role"] == "user")
    out[last_user]["content"] = f"{RAG_INSTRUCTION}\n\n{context}\n\nQuestion: {out[last_user]['content']}"
    return out


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


def _chat_logprobs(lps: list[TokenLogprob] | None, k: int | None) -> dict[str, Any] | None:
    if lps is None:
        return None
    return {"content": [
        {"token": lp.token, "logprob": lp.logprob, "bytes": list(lp.token.encode()),
         "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in lp.top[: k or 0]]}
        for lp in lps]}


def _completion_logprobs(lps: list[TokenLogprob] | None, k: int | None, offset: int = 0) -> dict[str, Any] | None:
    if lps is None:
        return None
    offsets, pos = [], offset
    for lp in lps:
        offsets.append(pos)
        pos += len(lp.token)
    return {"tokens": [lp.token for lp in lps], "token_logprobs": [lp.logprob for lp in lps],
            "top_logprobs": [dict(lp.top[: k or 0]) for lp in lps], "text_offset": offsets}


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

    def _params(self, req: SamplingFields, prompt_len: int, max_tokens: int | None,
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

    async def prepare_chat(self, req: ChatCompletionRequest) -> Prepared:
        if len(req.messages) > self.settings.max_messages:
            raise BadRequest(f"{len(req.messages)} messages is above this server's limit "
                             f"{self.settings.max_messages}", param="messages", code="too_many_messages")
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        if not any(m["role"] == "user" for m in messages):
            raise BadRequest("messages must contain at least one user message", param="messages")
        passages = None
        if req.rag is not None:
            if self.retriever is None:
                raise BadRequest("retrieval is not enabled on this server", param="rag")
            query = next(m["content"] for m in reversed(messages) if m["role"] == "user")
            passages = await asyncio.to_thread(self.retriever.retrieve, req.rag.collection, query, req.rag.top_k)
            messages = with_passages(messages, passages)
        lora = await self.resolve(req.model)
        try:
            prompt_ids = encode(self.engine.tokenizer, messages, add_generation_prompt=True)
        except TemplateError as e:
            raise BadRequest(str(e), param="messages") from e
        k = req.top_logprobs if req.logprobs else None
        params = self._params(req, len(prompt_ids), req.effective_max_tokens(),
                              (k or 0) if req.logprobs else None)
        return Prepared(req.model, lora, prompt_ids, params, top_logprobs=k, passages=passages)

    async def prepare_completion(self, req: CompletionRequest) -> Prepared:
        lora = await self.resolve(req.model)
        prompt_ids = self.engine.tokenizer(req.prompt_text(), add_special_tokens=False)["input_ids"]
        if not prompt_ids:
            raise BadRequest("prompt must not be empty", param="prompt")
        max_tokens = 16 if req.max_tokens is None else req.max_tokens  # OpenAI's default for completions
        params = self._params(req, len(prompt_ids), max_tokens, req.logprobs)
        return Prepared(req.model, lora, prompt_ids, params, top_logprobs=req.logprobs)

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

    async def run(self, kind: str, prep: Prepared, request: Request) -> Any:
        """Execute a prepared request: a JSON body, or an SSE stream."""
        endpoint = "chat" if kind == "chat" else "completions"
        include_usage = False
        if prep.params.stream:
            include_usage = bool(getattr(request.state, "include_usage", False))
            cm = self.admission.slot()
            first_token = await cm.__aenter__()
            stream = self._sse(kind, prep, first_token, include_usage, cm, endpoint)
            return StreamingResponse(stream, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        async with self.admission.slot() as first_token:
            try:
                choices, prompt_tokens = await self._collect_unless_disconnected(prep, request, first_token)
            except APIError:
                self.metrics.requests.labels(prep.model, endpoint, "error").inc()
                raise
        self.metrics.requests.labels(prep.model, endpoint, "ok").inc()
        completion_tokens = sum(len(c.token_ids) for c in choices)
        body = self._body(kind, prep, choices, usage(prompt_tokens, completion_tokens))
        return JSONResponse(body)

    def _body(self, kind: str, prep: Prepared, choices: list[ChoiceDelta], use: dict[str, int]) -> dict[str, Any]:
        if kind == "chat":
            body = {"id": new_id("chatcmpl"), "object": "chat.completion", "created": now(), "model": prep.model,
                    "choices": [{"index": c.index, "message": {"role": "assistant", "content": c.text},
                                 "logprobs": _chat_logprobs(c.logprobs, prep.top_logprobs),
                                 "finish_reason": c.finish_reason} for c in choices],
                    "usage": use}
            if prep.passages is not None:
                body["passages"] = passages_json(prep.passages)
            return body
        return {"id": new_id("cmpl"), "object": "text_completion", "created": now(), "model": prep.model,
                "choices": [{"index": c.index, "text": c.text,
                             "logprobs": _completion_logprobs(c.logprobs, prep.top_logprobs),
                             "finish_reason": c.finish_reason} for c in choices],
                "usage": use}

    async def _sse(self, kind: str, prep: Prepared, first_token: Callable[[], None], include_usage: bool,
                   slot: Any, endpoint: str) -> AsyncIterator[str]:
        cid, created = new_id("chatcmpl" if kind == "chat" else "cmpl"), now()
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
        sent_role: set[int] = set()
        offsets: dict[int, int] = {}
        prompt_tokens, completion_tokens, status = len(prep.prompt_ids), 0, "ok"

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
            payload = {"id": cid, "object": obj, "created": created, "model": prep.model, "choices": choices}
            payload.update(extra)
            return f"data: {json.dumps(payload)}\n\n"

        try:
            if kind == "chat" and prep.passages is not None:
                yield chunk([], passages=passages_json(prep.passages))
            async for step in self._steps(prep, first_token):
                prompt_tokens = step.prompt_tokens
                out = []
                for c in step.choices:
                    completion_tokens += len(c.token_ids)
                    if kind == "chat":
                        delta: dict[str, Any] = {} if c.index in sent_role else {"role": "assistant"}
                        sent_role.add(c.index)
                        if c.text or not delta:
                            delta["content"] = c.text
                        out.append({"index": c.index, "delta": delta,
                                    "logprobs": _chat_logprobs(c.logprobs, prep.top_logprobs),
                                    "finish_reason": c.finish_reason})
                    else:
                        out.append({"index": c.index, "text": c.text,
                                    "logprobs": _completion_logprobs(c.logprobs, prep.top_logprobs,
                                                                     offsets.get(c.index, 0)),
                                    "finish_reason": c.finish_reason})
                        offsets[c.index] = offsets.get(c.index, 0) + len(c.text)
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
            self.metrics.requests.labels(prep.model, endpoint, status).inc()
            await slot.__aexit__(None, None, None)
