"""POST /v1/completions: a raw prompt (no chat template), and the text completion wire format."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

from loradock.serve.engine import ChoiceDelta, GenParams, TokenLogprob
from loradock.serve.errors import BadRequest
from loradock.serve.generation import GenerationService, Prepared
from loradock.serve.schemas import CompletionRequest, new_id, now


async def prepare_completion(service: GenerationService, req: CompletionRequest,
                             resources: AsyncExitStack) -> Prepared:
    """Resolve the model, tokenize the prompt as it is (off the event loop), and check limits."""
    lora = await service.resolve(req.model, resources)
    text = req.prompt_text()
    max_tokens = 16 if req.max_tokens is None else req.max_tokens  # OpenAI's default for completions

    def tokenize() -> tuple[list[int], GenParams]:
        prompt_ids = service.engine.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not prompt_ids:
            raise BadRequest("prompt must not be empty", param="prompt")
        return prompt_ids, service.params(req, len(prompt_ids), max_tokens, req.logprobs)

    prompt_ids, params = await service.off_loop(tokenize)
    return Prepared(req.model, lora, prompt_ids, params, top_logprobs=req.logprobs,
                    echo=text if req.echo else None, include_usage=req.include_usage())


def _logprobs(lps: list[TokenLogprob] | None, k: int | None, offset: int = 0) -> dict[str, Any] | None:
    if lps is None:
        return None
    offsets, pos = [], offset
    for lp in lps:
        offsets.append(pos)
        pos += len(lp.token)
    return {"tokens": [lp.token for lp in lps], "token_logprobs": [lp.logprob for lp in lps],
            "top_logprobs": [dict(lp.top[: k or 0]) for lp in lps], "text_offset": offsets}


class CompletionWire:
    """OpenAI's text completion shapes, for one request (a stream keeps each choice's text offset)."""

    endpoint = "completions"
    id_prefix = "cmpl"
    chunk_object = "text_completion"

    def __init__(self, prep: Prepared) -> None:
        self.prep = prep
        self._offsets: dict[int, int] = {}

    def body(self, choices: list[ChoiceDelta], use: dict[str, int]) -> dict[str, Any]:
        prep = self.prep
        return {"id": new_id(self.id_prefix), "object": "text_completion", "created": now(), "model": prep.model,
                "choices": [{"index": c.index, "text": (prep.echo or "") + c.text,
                             "logprobs": _logprobs(c.logprobs, prep.top_logprobs),
                             "finish_reason": c.finish_reason} for c in choices],
                "usage": use}

    def preamble(self) -> list[dict[str, Any]]:
        return []

    def chunk_choice(self, c: ChoiceDelta) -> dict[str, Any]:
        first = c.index not in self._offsets
        offset = self._offsets.get(c.index, 0)
        self._offsets[c.index] = offset + len(c.text)
        text = (self.prep.echo or "") + c.text if first else c.text  # echo: the prompt leads each choice
        return {"index": c.index, "text": text, "logprobs": _logprobs(c.logprobs, self.prep.top_logprobs, offset),
                "finish_reason": c.finish_reason}
