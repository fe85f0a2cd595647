"""The UI's only way to the server: the official `openai` client, plus httpx for loradock's extras.

The UI holds no admin key of its own: admin calls take the key an admin typed into this browser session.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import quote

import httpx
import openai

log = logging.getLogger(__name__)
TIMEOUT_S = 300.0


@dataclass
class StreamResult:
    """The state of one streamed answer, updated as chunks arrive."""

    text: str = ""
    passages: list[dict[str, Any]] | None = None
    prompt_tokens: int | None = None
    completion_tokens: int = 0
    ttft_s: float | None = None
    latency_s: float = 0.0
    finish_reason: str | None = None
    error: str | None = None
    done: bool = False

    def stats_line(self) -> str:
        """Latency and token counts, one line of Markdown."""
        if self.error:
            return f"**error:** {self.error}"
        parts = [f"{self.latency_s:.2f} s"]
        if self.ttft_s is not None:
            parts.append(f"first token {self.ttft_s:.2f} s")
        parts.append(f"{self.completion_tokens} tokens")
        if self.done and self.latency_s > 0 and self.completion_tokens:
            parts.append(f"{self.completion_tokens / self.latency_s:.1f} tok/s")
        if self.prompt_tokens is not None:
            parts.append(f"prompt {self.prompt_tokens} tokens")
        return ("" if self.done else "streaming... ") + " · ".join(parts)


class AdminKeyMissing(RuntimeError):
    """An admin action was asked for before an admin typed the key in this browser session."""


@dataclass
class ServerClient:
    """Where the loradock server is and the inference key to use (admin keys come per call)."""

    url: str
    api_key: str | None = None
    _openai: openai.OpenAI | None = field(default=None, init=False, repr=False)

    @property
    def v1(self) -> str:
        return self.url.rstrip("/") + "/v1"

    def openai(self) -> openai.OpenAI:
        """The official client (created once per ServerClient; it is thread-safe)."""
        if self._openai is None:
            self._openai = openai.OpenAI(base_url=self.v1, api_key=self.api_key or "not-needed",
                                         timeout=TIMEOUT_S, max_retries=0)
        return self._openai

    def request(self, method: str, path: str, *, admin_key: str | None = None, admin: bool = False,
                timeout: float = 60, **kwargs: Any) -> httpx.Response:
        """One call to ``/v1{path}``; admin calls need the key typed in this session. Raises on 4xx/5xx."""
        if admin and not admin_key:
            raise AdminKeyMissing("this is an admin action: type the admin key (top of the page) and press "
                                  "Unlock first")
        key = admin_key if admin else self.api_key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            r = httpx.request(method, f"{self.v1}{path}", headers=headers, timeout=timeout, **kwargs)
        except httpx.HTTPError as e:
            raise RuntimeError(f"cannot reach the server at {self.url}: {e}") from e
        _raise_for_error(r)
        return r

    def models(self) -> list[dict[str, Any]]:
        """GET /v1/models with loradock's fields (parent, loaded, rank, template_sha256, version, ...)."""
        return self.request("GET", "/models", timeout=30).json()["data"]

    def adapter(self, name: str) -> dict[str, Any]:
        """GET /v1/adapters/{name}: the manifest as the server sees it, with loss curves."""
        return self.request("GET", f"/adapters/{quote(name, safe='')}").json()

    def check_admin(self, admin_key: str) -> None:
        """Raise unless ``admin_key`` opens the server's admin routes."""
        self.request("GET", "/feedback", admin_key=admin_key, admin=True, params={"limit": 1})

    def admin(self, action: str, name: str, admin_key: str | None, pin: bool = False) -> str:
        """POST /v1/load_lora_adapter (optionally pinned) or /v1/unload_lora_adapter; the server's message."""
        if action not in ("load", "unload"):
            raise ValueError("action must be load or unload")
        body: dict[str, Any] = {"lora_name": name, **({"pin": True} if pin else {})}
        return self.request("POST", f"/{action}_lora_adapter", admin_key=admin_key, admin=True, json=body,
                            timeout=120).text

    # -- feedback ----------------------------------------------------------------------------------------
    def vote(self, record: dict[str, Any]) -> dict[str, Any]:
        """POST /v1/feedback (the inference key); the acknowledgement once the record is committed."""
        return self.request("POST", "/feedback", json=record).json()

    def stats(self, filters: dict[str, Any]) -> dict[str, Any]:
        """GET /v1/feedback/stats: counts and win rates, computed by the server's database."""
        return self.request("GET", "/feedback/stats", params=filters).json()

    def leaderboard(self, filters: dict[str, Any], level: str) -> dict[str, Any]:
        """GET /v1/feedback/leaderboard: Bradley-Terry ratings with intervals and head-to-head tables."""
        return self.request("GET", "/feedback/leaderboard", params={**filters, "level": level}, timeout=180).json()

    def records(self, filters: dict[str, Any], admin_key: str | None, limit: int = 500) -> dict[str, Any]:
        """GET /v1/feedback (admin): the records, newest first, and how many match."""
        return self.request("GET", "/feedback", admin_key=admin_key, admin=True,
                            params={**filters, "limit": limit}).json()

    def delete_record(self, record_id: str, admin_key: str | None) -> None:
        """DELETE /v1/feedback/{id} (admin)."""
        self.request("DELETE", f"/feedback/{quote(record_id, safe='')}", admin_key=admin_key, admin=True)

    def quality(self, filters: dict[str, Any], admin_key: str | None) -> dict[str, Any]:
        """GET /v1/feedback/quality (admin): contradictions, agreement, near-duplicates."""
        return self.request("GET", "/feedback/quality", admin_key=admin_key, admin=True, params=filters).json()

    def export(self, filters: dict[str, Any], quality: dict[str, Any], admin_key: str | None) -> dict[str, Any]:
        """POST /v1/feedback/export (admin): DPO rows and the report of what was dropped and kept."""
        return self.request("POST", "/feedback/export", admin_key=admin_key, admin=True, timeout=300,
                            json={"filters": filters, "quality": quality}).json()

    def stream_chat(self, model: str, messages: list[dict[str, str]], *, temperature: float = 0.0,
                    top_p: float = 1.0, max_tokens: int = 128,
                    rag: dict[str, Any] | None = None) -> Iterator[StreamResult]:
        """Stream a chat completion; yields the same StreamResult, updated, after every chunk.

        Errors end the stream with ``result.error`` set instead of raising, so one failing column does not
        stop the others.
        """
        result = StreamResult()
        started = time.perf_counter()
        extra = {"rag": rag} if rag else None
        try:
            stream = self.openai().chat.completions.create(
                model=model, messages=cast(Any, messages), temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                stream=True, stream_options={"include_usage": True}, extra_body=extra)
            for chunk in stream:
                passages = (chunk.model_extra or {}).get("passages")
                if passages is not None:
                    result.passages = passages
                if chunk.usage is not None:
                    result.prompt_tokens = chunk.usage.prompt_tokens
                    result.completion_tokens = chunk.usage.completion_tokens
                for choice in chunk.choices:
                    delta = choice.delta.content or ""
                    if delta and result.ttft_s is None:
                        result.ttft_s = time.perf_counter() - started
                    result.text += delta
                    if delta and chunk.usage is None:
                        result.completion_tokens += 1  # one token per chunk until usage arrives
                    result.finish_reason = choice.finish_reason or result.finish_reason
                result.latency_s = time.perf_counter() - started
                yield result
        except openai.APIStatusError as e:
            result.error = f"{e.status_code}: {_message(e)}"
        except openai.APIError as e:
            result.error = str(e)
        result.latency_s = time.perf_counter() - started
        result.done = True
        yield result


def _message(e: openai.APIStatusError) -> str:
    body = e.body if isinstance(e.body, dict) else {}
    err = body.get("error", body) if isinstance(body, dict) else {}
    return err.get("message", str(e)) if isinstance(err, dict) else str(e)


def _raise_for_error(r: httpx.Response) -> None:
    if r.status_code < 400:
        return
    try:
        message = r.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = r.text[:300]
    raise RuntimeError(f"{r.request.method} {r.request.url.path} -> {r.status_code}: {message}")


def split_models(models: list[dict[str, Any]]) -> tuple[str | None, list[str]]:
    """(base model id, adapter ids) from a /v1/models listing: the base has no parent."""
    base = next((m["id"] for m in models if not m.get("parent")), None)
    return base, [m["id"] for m in models if m.get("parent")]
