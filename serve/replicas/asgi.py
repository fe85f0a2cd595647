"""A loradock app called in-process over ASGI, one request at a time, with its response streamed back.

The Ray replica runs the full FastAPI app (routes, auth, limits, error handlers) this way, so a replica answers
exactly as ``loradock serve`` would. No Ray here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message


@dataclass
class HttpRequest:
    """What the ingress forwards: an HTTP request with its whole body (bodies are capped at 1 MiB anyway)."""

    method: str
    path: str
    query: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


@dataclass
class ResponseStart:
    """The first item of a streamed response: status and headers; body chunks (bytes) follow."""

    status: int
    headers: list[tuple[str, str]]


@dataclass
class HttpResponse:
    """A whole response, for broadcasts whose answers are merged."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


def _scope(req: HttpRequest) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": req.method.upper(), "scheme": "http", "path": req.path, "raw_path": req.path.encode(),
            "query_string": req.query, "root_path": "", "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0),
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in req.headers]}


async def stream(app: ASGIApp, req: HttpRequest) -> AsyncIterator[ResponseStart | bytes]:
    """Run ``req`` through ``app``; yield a :class:`ResponseStart`, then the body chunks as they are sent.

    Closing the iterator early (the client went away) tells the app the client disconnected, as uvicorn would.
    """
    messages: asyncio.Queue[Message | None] = asyncio.Queue()
    gone = asyncio.Event()
    body_sent = False

    async def receive() -> Message:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": req.body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        await messages.put(message)

    task: asyncio.Task[None] = asyncio.ensure_future(app(_scope(req), receive, send))
    task.add_done_callback(lambda _: messages.put_nowait(None))
    try:
        while (message := await messages.get()) is not None:
            if message["type"] == "http.response.start":
                headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", [])]
                yield ResponseStart(int(message["status"]), headers)
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    yield bytes(message["body"])
                if not message.get("more_body", False):
                    break
        await task  # re-raises what the app raised (error handlers normally turn it into a response)
    finally:
        gone.set()
        if not task.done():
            with suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(task), timeout=5)
            task.cancel()


async def collect(app: ASGIApp, req: HttpRequest) -> HttpResponse:
    """Run ``req`` through ``app`` and return the whole response."""
    start, chunks = None, []
    async for item in stream(app, req):
        if isinstance(item, ResponseStart):
            start = item
        else:
            chunks.append(item)
    if start is None:
        raise RuntimeError(f"{req.method} {req.path}: the app sent no response")
    return HttpResponse(start.status, start.headers, b"".join(chunks))
