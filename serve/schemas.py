"""Pydantic request/response models of the OpenAI-compatible API (plus loradock's extensions)."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from loradock.rag.index import Passage


class _Request(BaseModel):
    # Unknown OpenAI fields are ignored, as vLLM does, so newer clients keep working.
    model_config = ConfigDict(extra="ignore")


class StreamOptions(BaseModel):
    include_usage: bool = False


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class RagSpec(BaseModel):
    """loradock extension: retrieve passages from a collection and put them into the prompt."""

    collection: str = Field(min_length=1, max_length=64)
    top_k: int = Field(4, ge=1, le=20)


class SamplingFields(_Request):
    model: str = Field(min_length=1, description="The base model id or an adapter name.")
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    user: str | None = None
    ignore_eos: bool = Field(False, description="vLLM extension: keep generating past end-of-sequence.")

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> list[str] | None:
        if v is None:
            return None
        stops = [v] if isinstance(v, str) else v
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings")
        return stops


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    rag: RagSpec | None = None

    def effective_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(SamplingFields):
    prompt: str | list[str]
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and len(v) != 1:
            raise ValueError("prompt must be one string (batches of prompts are not supported; send requests)")
        return v

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class LoadLoRARequest(_Request):
    lora_name: str
    lora_path: str | None = None
    pin: bool = Field(False, description="loradock extension: never evict this adapter.")
    force: bool = Field(False, description="loradock extension: accept a chat-template hash mismatch.")


class UnloadLoRARequest(_Request):
    lora_name: str
    lora_int_id: int | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "loradock"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None
    loaded: bool = False
    rank: int | None = None
    template_sha256: str | None = None
    pinned: bool = False
    description: str = ""
    version: int | None = Field(None, description="The adapter's current version; `id@version` pins it.")
    content_sha256: str | None = Field(None, description="SHA-256 over the current version's files.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def now() -> int:
    return int(time.time())


def passages_json(passages: list[Passage] | None) -> list[dict[str, Any]] | None:
    return None if passages is None else [p.model_dump() for p in passages]
