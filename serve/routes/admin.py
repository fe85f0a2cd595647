"""Adapter admin: vLLM-compatible load/unload, and loradock's versions (history, rollback, the store's state)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from loradock.serve.auth import require_admin_key, require_api_key, require_ready
from loradock.serve.schemas import LoadLoRARequest, UnloadLoRARequest

router = APIRouter(dependencies=[Depends(require_ready), Depends(require_admin_key)])
reader = APIRouter(dependencies=[Depends(require_ready), Depends(require_api_key)])


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: int | None = Field(None, ge=1, le=999_999_999,
                           description="Version to make current (default: the one before the current).")


@router.post("/v1/load_lora_adapter", response_class=PlainTextResponse,
             summary="Serve an adapter from the store (by name, or by a path inside the store)")
async def load_lora_adapter(body: LoadLoRARequest, request: Request) -> str:
    entry = await request.app.state.registry.load(body.lora_name, body.lora_path, body.pin, body.force)
    request.app.state.metrics.adapter_loads.labels(entry.name).inc()
    return f"Success: LoRA adapter '{entry.name}' added successfully (version {entry.version})."


@router.post("/v1/unload_lora_adapter", response_class=PlainTextResponse,
             summary="Stop serving an adapter until loaded again (it leaves the engine once drained)")
async def unload_lora_adapter(body: UnloadLoRARequest, request: Request) -> str:
    await request.app.state.registry.unload(body.lora_name)
    return f"Success: LoRA adapter '{body.lora_name}' removed successfully."


@router.get("/v1/adapters", summary="The store as this server sees it: current versions, and refused entries")
async def store_state(request: Request) -> dict[str, Any]:
    registry = request.app.state.registry
    await registry.sync()
    served = registry.entries
    return {"object": "list",
            "data": [{"id": name, "version": e.version, "content_sha256": e.content_sha256, "pinned": e.pinned}
                     for name, e in sorted(served.items())],
            "invalid": [{"entry": entry, "code": r.code, "message": r.message}
                        for entry, r in sorted(registry.invalid.items())]}


@reader.get("/v1/adapters/{name}/versions", summary="Kept versions of an adapter, newest first")
async def versions(name: str, request: Request) -> dict[str, Any]:
    return {"object": "list", "id": name, "data": request.app.state.registry.history(name)}


@router.post("/v1/adapters/{name}/rollback", summary="Make an older version current (atomically, drained)")
async def rollback(name: str, request: Request, body: RollbackRequest | None = None) -> dict[str, Any]:
    record = await request.app.state.registry.rollback(name, body.to if body else None)
    return {"object": "adapter.version", "id": name, "version": record.number, "current": True}
