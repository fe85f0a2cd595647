"""Bearer-key checks: LORADOCK_API_KEY guards inference, LORADOCK_ADMIN_KEY guards admin routes."""

from __future__ import annotations

import hmac

from fastapi import Request

from loradock.serve.errors import Unauthorized


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _check(request: Request, expected: str | None, what: str) -> None:
    if expected is None:
        return
    given = _bearer(request)
    if given is None:
        raise Unauthorized(f"missing {what} key: send the header 'Authorization: Bearer <key>'",
                           code="missing_api_key")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise Unauthorized(f"invalid {what} key", code="invalid_api_key")


async def require_api_key(request: Request) -> None:
    """Inference and feedback routes. The admin key is accepted too."""
    settings = request.app.state.settings
    api = settings.api_key.get_secret_value() if settings.api_key else None
    admin = settings.admin_key.get_secret_value() if settings.admin_key else None
    if api is not None and admin is not None and _bearer(request) == admin:
        return
    _check(request, api, "API")


async def require_admin_key(request: Request) -> None:
    """Adapter load/unload. Without LORADOCK_ADMIN_KEY these routes follow the API key."""
    settings = request.app.state.settings
    if settings.admin_key is None:
        await require_api_key(request)
        return
    _check(request, settings.admin_key.get_secret_value(), "admin")


async def require_ready(request: Request) -> None:
    """Before the engine is up, answer 503 with Retry-After instead of failing inside the handler."""
    if not getattr(request.app.state, "ready", False):
        from loradock.serve.errors import Unavailable

        raise Unavailable("the engine is still starting; retry in a few seconds", code="engine_starting",
                          headers={"Retry-After": "5"})
