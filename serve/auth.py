"""Bearer-key checks: LORADOCK_API_KEY guards inference, LORADOCK_ADMIN_KEY guards admin routes, and the
optional LORADOCK_METRICS_KEY guards /metrics, /docs and /openapi.json. Every comparison is constant-time."""

from __future__ import annotations

import base64
import binascii
import hmac

from fastapi import Request
from pydantic import SecretStr
from starlette.types import ASGIApp, Receive, Scope, Send

from loradock.core.settings import Settings
from loradock.serve.errors import Unauthorized, Unavailable, error_response

# Paths that describe the server rather than serve it: open like vLLM's unless a metrics key guards them.
OPERATOR_PATHS = frozenset({"/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def matches(given: str | None, expected: str | None) -> bool:
    """Constant-time key comparison; False when either side is missing."""
    if given is None or expected is None:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def _check(request: Request, expected: str | None, what: str) -> None:
    if expected is None:
        return
    given = _bearer(request)
    if given is None:
        raise Unauthorized(f"missing {what} key: send the header 'Authorization: Bearer <key>'",
                           code="missing_api_key")
    if not matches(given, expected):
        raise Unauthorized(f"invalid {what} key", code="invalid_api_key")


def is_admin(request: Request) -> bool:
    """Whether the caller presented the admin key (only possible when one is configured)."""
    return matches(_bearer(request), _secret(request.app.state.settings.admin_key))


async def require_api_key(request: Request) -> None:
    """Inference and feedback routes. The admin key is accepted too."""
    settings = request.app.state.settings
    admin = is_admin(request)
    request.state.admin = admin
    if not admin:
        _check(request, _secret(settings.api_key), "API")


async def require_admin_key(request: Request) -> None:
    """Adapter load/unload. Without LORADOCK_ADMIN_KEY these routes follow the API key."""
    settings = request.app.state.settings
    if settings.admin_key is None:
        await require_api_key(request)
        return
    _check(request, _secret(settings.admin_key), "admin")
    request.state.admin = True


async def require_ready(request: Request) -> None:
    """Before the engine is up, answer 503 with Retry-After instead of failing inside the handler."""
    if not getattr(request.app.state, "ready", False):
        raise Unavailable("the engine is still starting; retry in a few seconds", code="engine_starting",
                          headers={"Retry-After": "5"})


def operator_keys(settings: Settings) -> list[str]:
    """Keys that open /metrics and /docs: the metrics key; else, when metrics are closed, the admin key (or
    the API key without one). Empty: open."""
    if settings.metrics_key is not None:
        keys = [_secret(settings.metrics_key), _secret(settings.admin_key)]
    elif not settings.metrics_open:
        keys = [_secret(settings.admin_key) or _secret(settings.api_key)]
    else:
        return []
    return [k for k in keys if k]


def _presented(headers: dict[bytes, bytes]) -> str | None:
    """The key in 'Authorization: Bearer KEY' or in HTTP Basic's password (so a browser can open /docs)."""
    scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    if scheme.lower() == "bearer":
        return token.strip() or None
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(token.strip(), validate=True).decode().partition(":")[2] or None
        except (binascii.Error, UnicodeDecodeError):
            return None
    return None


class OperatorPaths:
    """Guard /metrics, /docs, /redoc and /openapi.json with :func:`operator_keys` (ASGI middleware)."""

    def __init__(self, app: ASGIApp, keys: list[str]) -> None:
        self.app, self.keys = app, keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or scope["path"] not in OPERATOR_PATHS:
            await self.app(scope, receive, send)
            return
        given = _presented(dict(scope.get("headers") or []))
        if any([matches(given, key) for key in self.keys]):  # a list: compare with every key, whichever matches
            await self.app(scope, receive, send)
            return
        err = Unauthorized("this path needs the metrics key (or the admin key): send 'Authorization: Bearer "
                           "<key>', or HTTP Basic with the key as the password",
                           code="missing_api_key" if given is None else "invalid_api_key",
                           headers={"WWW-Authenticate": 'Basic realm="loradock"'})
        await error_response(err)(scope, receive, send)
