"""The one chat template, its SHA-256, and the one render function used everywhere.

Serving, training and the UI all call :func:`render` (or :func:`encode`), so the text a model is trained on
is byte-identical to the text it is served with. The template file carries TRL-style ``{% generation %}``
markers; :func:`render_with_spans` uses them to report the assistant character spans for loss masking.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

TEMPLATE_FILE = "chat_template.jinja"
ROLES = ("system", "user", "assistant")
# Sentinels never appear in user text (they are control characters) and are stripped before returning.
_SPAN_OPEN, _SPAN_CLOSE = "\x00\x01gen\x01", "\x01gen\x01\x00"


class TemplateError(ValueError):
    """A conversation the template cannot render (empty, unknown role, non-text content)."""


@dataclass(frozen=True)
class Rendered:
    """Rendered text plus the [start, end) character spans of assistant generations."""

    text: str
    assistant_spans: list[tuple[int, int]]


class _GenerationExtension(Extension):
    """Parses ``{% generation %}...{% endgeneration %}``; optionally wraps the body in sentinels."""

    tags = {"generation"}

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_wrap", []), [], [], body).set_lineno(lineno)

    def _wrap(self, caller: Any) -> str:
        body = caller()
        if self.environment.globals.get("_loradock_mark_spans"):
            return f"{_SPAN_OPEN}{body}{_SPAN_CLOSE}"
        return body


def template_source() -> str:
    """The Jinja source of the one chat template (what tokenizers get as ``chat_template``)."""
    return resources.files("loradock.core").joinpath(TEMPLATE_FILE).read_text(encoding="utf-8")


def template_sha256() -> str:
    """SHA-256 of the template file; stored in every adapter manifest and checked at load."""
    return hashlib.sha256(template_source().encode("utf-8")).hexdigest()


@lru_cache(maxsize=2)
def _compiled(mark_spans: bool) -> Any:
    # Same environment options as transformers' apply_chat_template, so both render identically.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationExtension])
    env.globals["_loradock_mark_spans"] = mark_spans
    return env.from_string(template_source())


def normalize_messages(messages: Sequence[Any]) -> list[dict[str, str]]:
    """Check roles and flatten OpenAI content parts to plain text; raise TemplateError with what to fix."""
    if not messages:
        raise TemplateError("messages must contain at least one message")
    out: list[dict[str, str]] = []
    for i, message in enumerate(messages):
        m = message if isinstance(message, dict) else dict(message)
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise TemplateError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}")
        if isinstance(content, list):
            parts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text":
                    raise TemplateError(f"messages[{i}].content: only text parts are supported")
                parts.append(str(part.get("text", "")))
            content = "".join(parts)
        if not isinstance(content, str):
            raise TemplateError(f"messages[{i}].content must be a string")
        if role == "system" and i != 0:
            raise TemplateError(f"messages[{i}]: a system message is only allowed first")
        out.append({"role": role, "content": content})
    return out


def render(messages: Sequence[Any], add_generation_prompt: bool = False) -> str:
    """Render a conversation to the exact text the model sees."""
    return _compiled(False).render(messages=normalize_messages(messages), add_generation_prompt=add_generation_prompt)


def render_with_spans(messages: Sequence[Any], add_generation_prompt: bool = False) -> Rendered:
    """Render and report where each assistant generation (content plus end-of-turn token) lies."""
    marked = _compiled(True).render(messages=normalize_messages(messages), add_generation_prompt=add_generation_prompt)
    text_parts: list[str] = []
    spans: list[tuple[int, int]] = []
    pos, cursor = 0, 0
    while True:
        start = marked.find(_SPAN_OPEN, cursor)
        if start < 0:
            text_parts.append(marked[cursor:])
            break
        end = marked.index(_SPAN_CLOSE, start)
        before = marked[cursor:start]
        body = marked[start + len(_SPAN_OPEN) : end]
        text_parts += [before, body]
        pos += len(before)
        spans.append((pos, pos + len(body)))
        pos += len(body)
        cursor = end + len(_SPAN_CLOSE)
    return Rendered("".join(text_parts), spans)


def encode(tokenizer: Any, messages: Sequence[Any], add_generation_prompt: bool = False) -> list[int]:
    """Token ids of the rendered conversation; no extra special tokens, exactly as training tokenizes."""
    return tokenizer(render(messages, add_generation_prompt), add_special_tokens=False)["input_ids"]
