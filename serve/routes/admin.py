"""vLLM-compatible adapter admin: POST /v1/load_lora_adapter and /v1/unload_lora_adapter."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse

from loradock.serve.auth import require_admin_key, require_ready
from loradock.serve.schemas import LoadLoRARequest, UnloadLoRARequest

router = APIRouter(dependencies=[Depends(require_ready), Depends(require_admin_key)])


@router.post("/v1/load_lora_adapter", response_class=PlainTextResponse,
             summary="Serve an adapter from the store (by name, or by a path inside the store)")
async def load_lora_adapter(body: LoadLoRARequest, request: Request) -> str:
    entry = await request.app.state.registry.load(body.lora_name, body.lora_path, body.pin, body.force)
    request.app.state.metrics.adapter_loads.labels(entry.name).inc()
    return f"Success: LoRA adapter '{entry.name}' added successfully."


@router.post("/v1/unload_lora_adapter", response_class=PlainTextResponse,
             summary="Remove an adapter from the engine and stop serving it until loaded again")
async def unload_lora_adapter(body: UnloadLoRARequest, request: Request) -> str:
    await request.app.state.registry.unload(body.lora_name)
    return f"Success: LoRA adapter '{body.lora_name}' removed successfully."
