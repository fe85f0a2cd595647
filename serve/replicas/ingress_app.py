"""The ingress's FastAPI app: one catch-all route that forwards, plus /health and /v1/replicas of its own."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray.exceptions import RayActorError

from loradock.serve.auth import require_admin_key
from loradock.serve.errors import Unavailable, error_response, install_error_handlers
from loradock.serve.replicas import merge
from loradock.serve.replicas.asgi import HttpRequest, HttpResponse

if TYPE_CHECKING:
    from loradock.serve.replicas.deployments import IngressServer

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]


async def _read(request: Request, limit: int) -> HttpRequest:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:  # the replica's own body limit answers 413; no need to read the rest
            break
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.scope["headers"]]
    return HttpRequest(request.method, request.url.path, request.scope.get("query_string", b""), headers, body)


def _response(answer: HttpResponse) -> Response:
    response = Response(answer.body, status_code=answer.status)
    response.raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers
                            if k.lower() != "content-length"] + [(b"content-length", str(len(answer.body)).encode())]
    return response


def build_ingress_app(server: IngressServer) -> FastAPI:
    """The app Ray Serve's proxy calls; ``server`` holds the handles."""
    app = FastAPI(title="loradock (replicas)", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = server.settings
    install_error_handlers(app)
    settings = server.settings

    @app.get("/health")
    async def health() -> Response:
        alive = await server.alive()
        body = {"status": "ok" if alive else "starting", "replicas": len(alive)}
        return JSONResponse(body, status_code=200 if alive else 503)

    @app.get("/v1/replicas", dependencies=[Depends(require_admin_key)])
    async def replicas() -> dict[str, object]:
        return {"object": "list", "data": [asdict(info) for info in await server.alive()]}

    @app.api_route("/{path:path}", methods=METHODS, include_in_schema=False)
    async def forward(request: Request) -> Response:
        req = await _read(request, settings.max_body_bytes)
        kind = server.router.kind(req.method, req.path)
        if kind in ("models", "metrics", "broadcast"):
            answers = await server.broadcast(req, changes_state=kind == "broadcast" and req.method != "GET")
            if not answers:
                raise Unavailable("no replica is serving yet; retry in a few seconds", code="no_replica",
                                  headers={"Retry-After": "5"})
            merged = {"models": merge.models, "metrics": merge.metrics}.get(kind, merge.worst)(answers)
            return _response(merged)
        if kind == "store":  # once, on one replica; then every replica rescans the store before we answer
            answer = await server.once(req)
            auth = [(k, v) for k, v in req.headers if k.lower() == "authorization"]
            await server.broadcast(HttpRequest("GET", "/v1/models", headers=auth), changes_state=False)
            return _response(answer)
        model_id = server.router.model_id(req.body) if kind == "adapter" else ""
        try:
            start, body = await server.routed(req, model_id)
        except RayActorError as e:
            return error_response(Unavailable(f"the replica serving this request was lost ({type(e).__name__}); "
                                              "retry", code="replica_lost", headers={"Retry-After": "2"}))
        response = StreamingResponse(body, status_code=start.status)
        response.raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in start.headers]
        return response

    return app
