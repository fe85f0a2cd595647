"""Typed API errors, always rendered OpenAI-shaped: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from loradock.rag.errors import CollectionNotFound, RagError

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error a client can see. Subclasses fix the status and type."""

    status = 400
    type = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.code, self.headers = message, param, code, headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class BadRequest(APIError):
    status = 400


class Unauthorized(APIError):
    status = 401
    type = "authentication_error"


class Forbidden(APIError):
    status = 403
    type = "permission_error"


class NotFound(APIError):
    status = 404
    type = "not_found_error"


class Conflict(APIError):
    status = 409


class RequestTimeout(APIError):
    status = 408


class PayloadTooLarge(APIError):
    status = 413


class Unprocessable(APIError):
    status = 422


class TooManyRequests(APIError):
    status = 429
    type = "rate_limit_error"


class ServerError(APIError):
    status = 500
    type = "server_error"


class Unavailable(APIError):
    status = 503
    type = "service_unavailable"


# An absolute POSIX path of two or more parts (not part of a URL): what non-admin callers must not see.
_ABS_PATH = re.compile(r"(?<![\w.:/~-])/(?:[\w.@+~-]+/)+[\w.@+~-]*")


def redact_paths(text: str) -> str:
    """Replace absolute server paths with their last part ('/srv/adapters/x' -> 'x')."""
    return _ABS_PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1], text)


def from_rag(exc: RagError) -> APIError:
    """Retrieval's refusal as the API error a client sees (404 for a missing collection, else 400)."""
    cls = NotFound if isinstance(exc, CollectionNotFound) else BadRequest
    return cls(exc.message, param=exc.param, code=exc.code)


def error_response(err: APIError, redact: bool = False) -> JSONResponse:
    body = err.body()
    if redact:
        body["error"]["message"] = redact_paths(body["error"]["message"])
    return JSONResponse(body, status_code=err.status, headers=err.headers)


def _redact(request: Request) -> bool:
    """Admin-key callers see server paths in messages; everyone else gets them redacted."""
    return not getattr(request.state, "admin", False)


def _is_union_tag(part: object) -> bool:
    """pydantic names the union member it tried in the error location ('str', 'list[TextPart]', ...)."""
    return isinstance(part, str) and (part in _UNION_TAGS or "[" in part or part.startswith("function-"))


_UNION_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list", "none", "null"})


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request body", None
    # The deepest problem is the most specific one (for a union: the member that came closest).
    first = max(errors, key=lambda e: len(e.get("loc", ())))
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path") and not _is_union_tag(p)]
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid value").removeprefix("Value error, ")
    extra = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return (f"{param}: {msg}{extra}" if param else f"{msg}{extra}"), param


def install_error_handlers(app: FastAPI) -> None:
    """Every error a client can cause leaves as a 4xx OpenAI-shaped body; crashes as a shaped 500."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc, _redact(request))

    @app.exception_handler(RagError)
    async def _rag_error(request: Request, exc: RagError) -> JSONResponse:
        return error_response(from_rag(exc), _redact(request))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return error_response(BadRequest(message, param=param, code="invalid_parameter"), _redact(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        cls = {401: Unauthorized, 404: NotFound, 405: BadRequest, 413: PayloadTooLarge}.get(exc.status_code, APIError)
        err = cls(str(exc.detail), code="http_error")
        err.status = exc.status_code
        return error_response(err)

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        err = APIError(f"internal server error: {type(exc).__name__}", code="internal_error")
        err.status, err.type = 500, "server_error"
        return error_response(err)
