"""Pydantic request/response models of the OpenAI-compatible API (plus loradock's extensions).

Every OpenAI (and common vLLM) request field is decided here: honoured, accepted because ignoring it cannot
change the answer, or refused with a 400 that says what to change. Unknown fields are refused too, as
OpenAI's own API does: silently ignoring them could change the answer (docs/api.md has the table).
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator, model_validator

from loradock.rag.index import Passage

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_LOGPROBS = 20  # vLLM's default max_logprobs
MAX_STOP = 4  # vLLM's VLLM_MAX_STOP_STRINGS and OpenAI's limit

# Fields some clients send that this server cannot honour, with what to do instead. Anything else unknown is
# refused with a generic message. A listed field is refused only when it asks for something (not null/false).
REFUSED: dict[str, str] = {
    "tools": "this model's chat template has no tool-call format, so tools cannot be honoured; remove `tools` "
             "(for structured output use `response_format` with `json_schema`)",
    "functions": "this model's chat template has no tool-call format; remove `functions` (deprecated `tools`)",
    "function_call": "this model's chat template has no tool-call format; remove `function_call`",
    "audio": "this server generates text only; remove `audio`",
    "reasoning_effort": "this model is not a reasoning model; remove `reasoning_effort`",
    "verbosity": "this server does not support `verbosity`; bound the answer with `max_tokens` instead",
    "web_search_options": "this server has no web search; remove `web_search_options`",
    "structured_outputs": "use `response_format` ({'type': 'json_schema', ...} or {'type': 'json_object'})",
    "guided_json": "use `response_format` with `json_schema`",
    "use_beam_search": "beam search is not supported; remove `use_beam_search`",
    "chat_template": "the server renders every prompt with its one chat template (the one adapters were "
                     "trained on); remove `chat_template`",
    "chat_template_kwargs": "the server's one chat template takes no arguments; remove `chat_template_kwargs`",
    "continue_final_message": "continuing the final message is not supported; remove `continue_final_message`",
    "prompt_logprobs": "prompt logprobs are not supported; remove `prompt_logprobs`",
    "suffix": "this server has no fill-in-the-middle support; remove `suffix`",
    "best_of": "best_of is not supported; send `n` and pick on the client",
}


# logit_bias keys are token ids written as strings; the schema says so, so generated clients send them right.
TokenIdKey = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,9}$")]
Bias = Annotated[float, Field(ge=-100, le=100)]


def _set(value: Any) -> bool:
    """Whether a refusable field asks for something (null, false and empty containers ask for nothing)."""
    return value is not None and value is not False and value != [] and value != {}


class _Request(BaseModel):
    # Extras are kept so they can be refused by name (see `refusals`); the schema says none are accepted.
    # Non-finite floats are not JSON.
    model_config = ConfigDict(extra="allow", allow_inf_nan=False, json_schema_extra={"additionalProperties": False})

    def refusals(self) -> tuple[str, str] | None:
        """The first field this server refuses, as (field, message); None when every field is handled."""
        for name, value in (self.model_extra or {}).items():
            if name in REFUSED:
                if _set(value):
                    return name, f"{name}: {REFUSED[name]}"
                continue
            return name, (f"{name}: unrecognized request argument; this server does not support it, remove it "
                          "(docs/api.md lists every supported field)")
        return None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool | None = False
    include_obfuscation: bool | None = Field(None, description="Accepted; streams are never padded.")


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """A message as stored with feedback (system, user, assistant; text only)."""

    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class RequestMessage(ChatMessage):
    """A chat completion message: every field either honoured or refused."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"] = Field(  # type: ignore[assignment]
        description="`developer` is OpenAI's newer name for `system` and is rendered as one.")
    name: None = Field(None, description="Refused when set: the chat template has no speaker names.")

    @field_validator("name", mode="before")
    @classmethod
    def _no_names(cls, v: Any) -> None:
        if v is not None:
            raise ValueError("the chat template has no speaker names, so `name` would be ignored; remove it")
        return None


class RagSpec(BaseModel):
    """loradock extension: retrieve passages from a collection and put them into the prompt."""

    model_config = ConfigDict(extra="forbid")
    collection: str = Field(min_length=1, max_length=64)
    top_k: int = Field(4, ge=1, le=20)


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    json_schema: dict[str, Any] = Field(alias="schema", description="A JSON Schema (object) the answer must match.")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's response_format, honoured through vLLM's structured outputs (xgrammar)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format type 'json_schema' needs a 'json_schema' object "
                             "({'name': ..., 'schema': {...}})")
        return self


class SamplingFields(_Request):
    model: str = Field(min_length=1, max_length=256, description="The base model id or an adapter name.")
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1, le=INT64_MAX)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    n: int | None = Field(1, ge=1, le=INT64_MAX)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[TokenIdKey, Bias] | None = Field(
        None, max_length=1024, description="Token id (as a string) -> bias in [-100, 100], as in OpenAI.")
    user: str | None = Field(None, max_length=256, description="Accepted; not used.")
    # vLLM extensions, honoured.
    ignore_eos: bool = Field(False, description="vLLM extension: keep generating past end-of-sequence.")
    top_k: int | None = Field(None, ge=-1, le=2**31 - 1, description="vLLM extension: 0 or -1 disables.")
    min_p: float | None = Field(None, ge=0, le=1, description="vLLM extension.")
    repetition_penalty: float | None = Field(None, gt=0, description="vLLM extension: 1 disables.")
    min_tokens: int = Field(0, ge=0, le=INT64_MAX, description="vLLM extension: generate at least this many.")
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = Field(None, max_length=64,
                                                                    description="vLLM extension.")
    include_stop_str_in_output: bool = Field(False, description="vLLM extension.")
    skip_special_tokens: bool = Field(True, description="vLLM extension.")
    spaces_between_special_tokens: bool = Field(True, description="vLLM extension.")

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> list[str] | None:
        if v is None:
            return None
        stops = [v] if isinstance(v, str) else v
        if len(stops) > MAX_STOP or any(not s for s in stops):
            raise ValueError(f"stop takes up to {MAX_STOP} non-empty strings")
        return stops or None

    @field_validator("logit_bias", mode="before")
    @classmethod
    def _logit_bias(cls, v: Any) -> Any:
        for key, bias in (v.items() if isinstance(v, dict) else ()):
            if not (isinstance(key, str) and key.isdigit()):
                raise ValueError(f"logit_bias keys are token ids as strings, like '1234'; got {key!r}")
            if isinstance(bias, int | float) and not -100 <= bias <= 100:
                raise ValueError(f"logit_bias values must be in [-100, 100]; got {bias} for token {key}")
        return v

    @field_validator("stop_token_ids")
    @classmethod
    def _stop_ids(cls, v: list[int] | None) -> list[int] | None:
        if v and any(i < 0 for i in v):
            raise ValueError("stop_token_ids must be non-negative token ids")
        return v

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_stream(cls, v: StreamOptions | None, info: ValidationInfo) -> StreamOptions | None:
        if v is not None and not info.data.get("stream"):
            raise ValueError("stream_options can only be set when stream is true")
        return v

    @property
    def n_choices(self) -> int:
        return 1 if self.n is None else self.n

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingFields):
    messages: list[RequestMessage] = Field(min_length=1, json_schema_extra={
        "contains": {"type": "object", "properties": {"role": {"const": "user"}}, "required": ["role"]}})
    max_completion_tokens: int | None = Field(None, ge=1, le=INT64_MAX)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    response_format: ResponseFormat | None = None
    rag: RagSpec | None = None
    tool_choice: Literal["none"] | None = Field(
        None, description="Only 'none' (or null) is accepted: this model has no tool-call format.")
    parallel_tool_calls: bool | None = Field(None, description="Accepted; meaningless without tools.")
    store: Literal[False] | None = Field(None, description="Refused when true: completions are not stored.")
    metadata: dict[str, str] | None = Field(None, max_length=16, description="Accepted; not stored.")
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = Field(
        None, description="Accepted; there is one tier.")
    modalities: list[Literal["text"]] | None = Field(None, description="Only ['text'].")
    prediction: dict[str, Any] | None = Field(
        None, description="Accepted; a latency hint that cannot change the answer.")
    prompt_cache_key: str | None = Field(None, max_length=256, description="Accepted; prefix caching is automatic.")
    safety_identifier: str | None = Field(None, max_length=256, description="Accepted; not used.")
    echo: Literal[False] | None = Field(False, description="vLLM extension; refused when true for chat.")
    add_generation_prompt: Literal[True] | None = Field(True, description="vLLM extension; only true.")

    # "before" validators: their messages say what to change, instead of pydantic's "Input should be ...".
    @field_validator("tool_choice", mode="before")
    @classmethod
    def _tool_choice(cls, v: Any) -> Any:
        if v not in (None, "none"):
            raise ValueError("this model's chat template has no tool-call format; only 'none' is accepted")
        return v

    @field_validator("store", mode="before")
    @classmethod
    def _store(cls, v: Any) -> Any:
        if v is True:
            raise ValueError("this server does not store completions; remove store or set it to false")
        return v

    @field_validator("modalities", mode="before")
    @classmethod
    def _modalities(cls, v: Any) -> Any:
        if isinstance(v, list) and any(m != "text" for m in v):
            raise ValueError("this server generates text only; use ['text'] or leave modalities out")
        return v

    @field_validator("echo", mode="before")
    @classmethod
    def _chat_echo(cls, v: Any) -> Any:
        if v is True:
            raise ValueError("echo is not supported for chat completions; remove it")
        return v

    @field_validator("add_generation_prompt", mode="before")
    @classmethod
    def _generation_prompt(cls, v: Any) -> Any:
        if v is False:
            raise ValueError("the server always adds the assistant generation prompt; remove this field")
        return v

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs: true")
        return v

    def effective_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(SamplingFields):
    prompt: str | list[str] = Field(description="One string (a list must hold exactly one).")
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool | None = Field(False, description="Put the prompt before the completion in `text`.")

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and len(v) != 1:
            raise ValueError("prompt must be one string (batches of prompts are not supported; send requests)")
        return v

    @field_validator("echo")
    @classmethod
    def _echo(cls, v: bool | None, info: ValidationInfo) -> bool | None:
        if v and info.data.get("logprobs") is not None:
            raise ValueError("echo with logprobs needs prompt logprobs, which this server does not compute; "
                             "drop one of them")
        return v

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class LoadLoRARequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    lora_name: str
    lora_path: str | None = None
    pin: bool = Field(False, description="loradock extension: never evict this adapter.")
    force: bool = Field(False, description="loradock extension: accept a chat-template hash mismatch.")


class UnloadLoRARequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
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
    root: str | None = Field(None, description="The model folder; shown to admin-key callers only.")
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
