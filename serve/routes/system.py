"""GET /health and GET /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

router = APIRouter()


@router.get("/health", summary="200 once the engine can serve; 503 while it starts or restarts")
async def health(request: Request) -> Response:
    state = request.app.state
    engine_state = getattr(state.engine, "state", "ready")
    if not getattr(state, "ready", False) or not getattr(state.engine, "serving", True):
        status = engine_state if engine_state not in ("ready", "starting") else "starting"
        body = {"status": status, "restarts": getattr(state.engine, "restarts", 0)}
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
    try:
        await state.engine.check_health()
    except Exception as e:  # the engine core died: the supervisor is restarting it
        return JSONResponse({"status": "restarting", "reason": str(e)}, status_code=503,
                            headers={"Retry-After": "5"})
    return JSONResponse({"status": "ok", "restarts": getattr(state.engine, "restarts", 0)})


@router.get("/metrics", summary="Prometheus metrics, labelled by adapter")
async def metrics(request: Request) -> Response:
    state = request.app.state
    if getattr(state, "ready", False):
        state.metrics.resident.set(len(await state.engine.resident_loras()))
        state.metrics.adapters.set(len(state.registry.names()))
        state.metrics.versions_open.set(state.registry.open_count())
        state.metrics.store_invalid.set(len(state.registry.invalid))
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")
