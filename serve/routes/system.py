"""GET /health and GET /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

router = APIRouter()


@router.get("/health", summary="200 once the engine can serve, 503 before")
async def health(request: Request) -> Response:
    state = request.app.state
    if not getattr(state, "ready", False):
        return JSONResponse({"status": "starting"}, status_code=503)
    try:
        await state.engine.check_health()
    except Exception as e:  # the engine process died
        return JSONResponse({"status": "unhealthy", "reason": str(e)}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/metrics", summary="Prometheus metrics, labelled by adapter")
async def metrics(request: Request) -> Response:
    state = request.app.state
    if getattr(state, "ready", False):
        state.metrics.resident.set(len(await state.engine.resident_loras()))
        state.metrics.adapters.set(len(state.registry.names()))
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")
