"""The engine boundary: loradock's own small types, and the vLLM AsyncLLM behind them.

Services speak only these types, so routing logic is unit-testable with a fake engine while every
feature is also proven against the real vLLM engine.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from loradock.core.settings import Settings
from loradock.serve.errors import Unavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoRATarget:
    """An adapter version as the engine knows it: a unique integer id, name ``adapter@version`` and the
    version's own immutable folder, so no cache, prefix block or LRU reload can mix two versions."""

    name: str
    int_id: int
    path: str
    adapter: str = ""  # the store name the version belongs to
    version: int = 0


class EngineUnavailable(Unavailable):
    """The engine cannot serve now: its core died, it is restarting, or it stopped. 503 with Retry-After;
    streams in flight end with this as their SSE error event."""

    def __init__(self, message: str = "the engine is restarting; retry in a few seconds",
                 retry_after: int = 5) -> None:
        super().__init__(message, code="engine_unavailable", headers={"Retry-After": str(retry_after)})


@dataclass(frozen=True)
class GenParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: list[str] | None = None
    seed: int | None = None
    logprobs: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    ignore_eos: bool = False
    stream: bool = False
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    stop_token_ids: list[int] | None = None
    logit_bias: dict[int, float] | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    structured: dict[str, Any] | None = None  # vLLM StructuredOutputsParams fields: {"json": schema} ...


class ParamsRejected(ValueError):
    """The engine refuses these sampling parameters (the client's fault): vLLM's own checks, run up front."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class ChoiceDelta:
    """New text of one choice since the previous step (or all of it when not streaming)."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None


@dataclass
class Step:
    choices: list[ChoiceDelta]
    prompt_tokens: int
    finished: bool


class Engine(Protocol):
    tokenizer: Any

    async def start(self) -> None: ...
    def check(self, params: GenParams) -> None: ...
    def generate(self, prompt_ids: list[int], params: GenParams, request_id: str,
                 lora: LoRATarget | None) -> AsyncIterator[Step]: ...
    async def abort(self, request_id: str) -> None: ...
    async def add_lora(self, lora: LoRATarget) -> None: ...
    async def remove_lora(self, int_id: int) -> bool: ...
    async def pin_lora(self, int_id: int) -> None: ...
    async def resident_loras(self) -> set[int]: ...
    async def check_health(self) -> None: ...
    async def shutdown(self) -> None: ...


def _logprobs(entries: Any, token_ids: list[int], tokenizer: Any) -> list[TokenLogprob] | None:
    if entries is None:
        return None
    out = []
    for tok, lp in zip(token_ids, entries, strict=False):
        chosen = lp.get(tok)
        top = sorted(lp.items(), key=lambda kv: kv[1].rank or 0)
        out.append(TokenLogprob(
            token=(chosen.decoded_token if chosen and chosen.decoded_token is not None
                   else tokenizer.decode([tok])),
            logprob=float(chosen.logprob) if chosen else float("-inf"),
            top=[(v.decoded_token or tokenizer.decode([k]), float(v.logprob)) for k, v in top if v.rank],
        ))
    return out


class VLLMEngine:
    """vLLM's AsyncLLM in this process (its engine core runs in a spawned child)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.llm: Any = None
        self.tokenizer: Any = None

    def engine_args(self) -> Any:
        from loradock.core.engine_args import async_engine_args

        return async_engine_args(self.settings)

    async def start(self) -> None:
        from transformers import AutoTokenizer
        from vllm.v1.engine.async_llm import AsyncLLM

        from loradock.core.engine_args import apply_engine_env

        apply_engine_env(self.settings, os.environ)  # read by the spawned engine process; a value the user set wins
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.settings.base_model))
        # Built in a worker thread so /health can answer 503 while the engine starts (about 30 s on CPU).
        self.llm = await asyncio.to_thread(AsyncLLM.from_engine_args, self.engine_args())

    def _live(self) -> Any:
        """The running AsyncLLM, or EngineUnavailable when there is none or its core has died."""
        llm = self.llm
        if llm is None or llm.errored:
            raise EngineUnavailable()
        return llm

    def _sampling(self, p: GenParams) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        return SamplingParams(
            n=p.n, max_tokens=p.max_tokens, temperature=p.temperature, top_p=p.top_p, stop=p.stop,
            seed=p.seed, logprobs=p.logprobs, presence_penalty=p.presence_penalty,
            frequency_penalty=p.frequency_penalty, ignore_eos=p.ignore_eos, top_k=p.top_k, min_p=p.min_p,
            repetition_penalty=p.repetition_penalty, min_tokens=p.min_tokens, stop_token_ids=p.stop_token_ids,
            logit_bias=p.logit_bias, include_stop_str_in_output=p.include_stop_str_in_output,
            skip_special_tokens=p.skip_special_tokens, spaces_between_special_tokens=p.spaces_between_special_tokens,
            structured_outputs=StructuredOutputsParams(**p.structured) if p.structured else None,
            output_kind=RequestOutputKind.DELTA if p.stream else RequestOutputKind.FINAL_ONLY,
        )

    def check(self, params: GenParams) -> None:
        """Run vLLM's own request checks (SamplingParams, then verify against the model: logprobs, token ids,
        structured-output grammar) here, so the engine never sees what it would refuse. CPU work: run it in
        a worker thread."""
        from vllm.exceptions import VLLMValidationError

        ip = self._live().input_processor
        try:
            self._sampling(params).verify(ip.model_config, ip.speculative_config, ip.structured_outputs_config,
                                          ip.tokenizer)
        except (VLLMValidationError, ValueError, TypeError) as e:
            raise ParamsRejected(str(e.args[0]) if e.args else str(e), getattr(e, "parameter", None)) from e

    async def generate(self, prompt_ids: list[int], params: GenParams, request_id: str,
                       lora: LoRATarget | None) -> AsyncIterator[Step]:
        from vllm.inputs import TokensPrompt
        from vllm.lora.request import LoRARequest
        from vllm.v1.engine.exceptions import EngineDeadError

        lora_request = LoRARequest(lora.name, lora.int_id, lora.path) if lora else None
        outputs = self._live().generate(TokensPrompt(prompt_token_ids=prompt_ids), self._sampling(params),
                                        request_id, lora_request=lora_request)
        try:
            async for out in outputs:
                yield self._step(out, prompt_ids)
        except EngineDeadError as e:
            raise EngineUnavailable("the engine stopped while generating; it restarts by itself, retry in a few "
                                    "seconds") from e
        finally:
            await outputs.aclose()

    def _step(self, out: Any, prompt_ids: list[int]) -> Step:
        choices = [
            ChoiceDelta(index=c.index, text=c.text, token_ids=list(c.token_ids),
                        logprobs=_logprobs(c.logprobs, list(c.token_ids), self.tokenizer),
                        finish_reason=c.finish_reason)
            for c in out.outputs
        ]
        return Step(choices=choices, prompt_tokens=len(out.prompt_token_ids or prompt_ids), finished=out.finished)

    async def _call(self, method: str, *args: Any) -> Any:
        """An AsyncLLM method, with vLLM's EngineDeadError as loradock's EngineUnavailable."""
        from vllm.v1.engine.exceptions import EngineDeadError

        try:
            return await getattr(self._live(), method)(*args)
        except EngineDeadError as e:
            raise EngineUnavailable() from e

    async def abort(self, request_id: str) -> None:
        if self.llm is not None and not self.llm.errored:
            await self._call("abort", request_id)

    async def add_lora(self, lora: LoRATarget) -> None:
        from vllm.lora.request import LoRARequest

        await self._call("add_lora", LoRARequest(lora.name, lora.int_id, lora.path))

    async def remove_lora(self, int_id: int) -> bool:
        return bool(await self._call("remove_lora", int_id))

    async def pin_lora(self, int_id: int) -> None:
        await self._call("pin_lora", int_id)

    async def resident_loras(self) -> set[int]:
        return set(await self._call("list_loras"))

    async def check_health(self) -> None:
        await self._call("check_health")

    async def shutdown(self) -> None:
        """Stop the engine (its processes too); :meth:`start` may build a fresh one afterwards."""
        llm, self.llm = self.llm, None
        if llm is not None:
            await asyncio.to_thread(llm.shutdown)
