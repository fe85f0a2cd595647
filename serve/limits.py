"""HTTP-level limits in front of the app: body size (413), body read deadline (408), header read deadline.

uvicorn has no header read timeout (a client may open a connection and drip one header byte at a time
forever), so :class:`TimedH11Protocol` adds one to its h11 protocol; the body deadline is ASGI middleware.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from loradock.serve.errors import APIError, PayloadTooLarge, RequestTimeout, error_response

log = logging.getLogger(__name__)


class _Refused(Exception):
    def __init__(self, err: APIError) -> None:
        self.err = err


class BodyLimit:
    """Refuse request bodies above ``max_bytes`` with an OpenAI-shaped 413 (declared or chunked), and bodies
    slower than ``timeout_s`` with a 408, whatever the app was doing with the body at the time."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float = 30.0) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = PayloadTooLarge(f"request body is larger than this server's limit of {self.max_bytes} bytes",
                                    code="body_too_large", headers={"Connection": "close"})
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await error_response(too_large)(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        seen, body_done = 0, False
        refused: list[APIError] = []
        started = False

        async def limited() -> Message:
            nonlocal seen, body_done
            if body_done:  # e.g. a streaming response waiting for the disconnect: no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.001))
            except TimeoutError:
                refused.append(RequestTimeout(f"the request body did not arrive within {self.timeout_s:g} s",
                                              code="body_timeout", headers={"Connection": "close"}))
                raise _Refused(refused[-1]) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if seen > self.max_bytes:
                    refused.append(too_large)
                    raise _Refused(too_large)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:  # the app answered the refusal in its own way (e.g. FastAPI's 400): drop that
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, guarded_send)
        except Exception:
            if not refused:  # only what our refusal caused is answered here
                raise
        if refused and not started:
            await error_response(refused[0])(scope, receive, send)


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing connections whose request line and headers take longer than
    ``header_timeout`` seconds (from the connection opening, or from the first byte of a later request)."""

    header_timeout: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE and data:
            if self._header_timer is None:
                self._arm()  # the first bytes of another request on a kept-alive connection
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.info("closing a connection from %s: no complete request headers within %g s", self.client,
                     self.header_timeout)
            self.transport.close()


def timed_h11(header_timeout: float) -> type[TimedH11Protocol]:
    """The protocol class for ``uvicorn.run(http=...)`` with this header timeout."""
    return type("TimedH11Protocol", (TimedH11Protocol,), {"header_timeout": header_timeout})
