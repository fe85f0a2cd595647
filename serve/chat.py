"""POST /v1/chat/completions: render messages through core's template, and the chat wire format."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

from loradock.core.template import TemplateError, encode
from loradock.serve.engine import ChoiceDelta, GenParams, TokenLogprob
from loradock.serve.errors import BadRequest
from loradock.serve.generation import GenerationService, Prepared
from loradock.serve.schemas import ChatCompletionRequest, Passage, new_id, now, passages_json

RAG_INSTRUCTION = "Answer the question using the numbered passages below. Cite the passage you use like [1]."


def with_passages(messages: list[dict[str, str]], passages: list[Passage]) -> list[dict[str, str]]:
    """Put numbered passages into the last user turn (small models use context next to the question best)."""
    context = "\n".join(f"[{i}] ({p.source}) {p.text}" for i, p in enumerate(passages, 1))
    out = [dict(m) for m in messages]
    last_user = max(i for i, m in enumerate(out) if m["role"] == "user")
    out[last_user]["content"] = f"{RAG_INSTRUCTION}\n\n{context}\n\nQuestion: {out[last_user]['content']}"
    return out


def _structured(req: ChatCompletionRequest) -> dict[str, Any] | None:
    """response_format as vLLM structured-output fields (xgrammar constrains decoding to the format)."""
    rf = req.response_format
    if rf is None or rf.type == "text":
        return None
    if rf.type == "json_object":
        return {"json_object": True}
    assert rf.json_schema is not None  # checked by the schema
    return {"json": rf.json_schema.json_schema}


async def prepare_chat(service: GenerationService, req: ChatCompletionRequest, resources: AsyncExitStack) -> Prepared:
    """Check limits, resolve the model, retrieve passages if asked, render the template (off the event loop)."""
    settings = service.settings
    if len(req.messages) > settings.max_messages:
        raise BadRequest(f"{len(req.messages)} messages is above this server's limit "
                         f"{settings.max_messages}", param="messages", code="too_many_messages")
    # OpenAI's `developer` role is its newer name for `system`.
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
    if not any(m["role"] == "user" for m in messages):
        raise BadRequest("messages must contain at least one user message", param="messages")
    if req.rag is not None and service.retriever is None:
        raise BadRequest("retrieval is not enabled on this server", param="rag")
    lora = await service.resolve(req.model, resources)
    passages = None
    if req.rag is not None and service.retriever is not None:
        query = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        passages = await asyncio.to_thread(service.retriever.retrieve, req.rag.collection, query, req.rag.top_k)
        messages = with_passages(messages, passages)
    k = req.top_logprobs if req.logprobs else None
    structured = _structured(req)

    def render() -> tuple[list[int], GenParams]:
        try:
            prompt_ids = encode(service.engine.tokenizer, messages, add_generation_prompt=True)
        except TemplateError as e:
            raise BadRequest(str(e), param="messages") from e
        params = service.params(req, len(prompt_ids), req.effective_max_tokens(), (k or 0) if req.logprobs else None,
                                structured)
        return prompt_ids, params

    prompt_ids, params = await service.off_loop(render)
    return Prepared(req.model, lora, prompt_ids, params, top_logprobs=k, passages=passages,
                    include_usage=req.include_usage())


def _logprobs(lps: list[TokenLogprob] | None, k: int | None) -> dict[str, Any] | None:
    if lps is None:
        return None
    return {"content": [
        {"token": lp.token, "logprob": lp.logprob, "bytes": list(lp.token.encode()),
         "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in lp.top[: k or 0]]}
        for lp in lps]}


class ChatWire:
    """OpenAI's chat completion shapes, for one request (a stream sends the role once per choice)."""

    endpoint = "chat"
    id_prefix = "chatcmpl"
    chunk_object = "chat.completion.chunk"

    def __init__(self, prep: Prepared) -> None:
        self.prep = prep
        self._sent_role: set[int] = set()

    def body(self, choices: list[ChoiceDelta], use: dict[str, int]) -> dict[str, Any]:
        prep = self.prep
        body = {"id": new_id(self.id_prefix), "object": "chat.completion", "created": now(), "model": prep.model,
                "choices": [{"index": c.index, "message": {"role": "assistant", "content": c.text},
                             "logprobs": _logprobs(c.logprobs, prep.top_logprobs),
                             "finish_reason": c.finish_reason} for c in choices],
                "usage": use}
        if prep.passages is not None:
            body["passages"] = passages_json(prep.passages)
        return body

    def preamble(self) -> list[dict[str, Any]]:
        """Fields of chunks sent before the first token: the retrieved passages, when there are some."""
        return [] if self.prep.passages is None else [{"passages": passages_json(self.prep.passages)}]

    def chunk_choice(self, c: ChoiceDelta) -> dict[str, Any]:
        delta: dict[str, Any] = {} if c.index in self._sent_role else {"role": "assistant"}
        self._sent_role.add(c.index)
        if c.text or not delta:
            delta["content"] = c.text
        return {"index": c.index, "delta": delta, "logprobs": _logprobs(c.logprobs, self.prep.top_logprobs),
                "finish_reason": c.finish_reason}
