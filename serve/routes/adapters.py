"""GET /v1/adapters/{name}: one adapter's manifest as the server sees it (read-only; the UI's only view of it).

Serving state, template check, training provenance and loss curves as ``[step, loss]`` points; recipe paths
are reduced to their last component, so no caller learns the server's folder layout.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from loradock.core.manifest import Manifest, check_name
from loradock.core.store import StoreError
from loradock.serve.auth import require_api_key, require_ready
from loradock.serve.errors import NotFound

router = APIRouter(dependencies=[Depends(require_ready), Depends(require_api_key)])
PATH_KEYS = ("data", "eval_data", "base_model", "adapters_dir", "output_dir", "progress_file")


class AdapterDetail(BaseModel):
    """What the store holds for one adapter, and whether the engine serves it."""

    id: str
    object: Literal["adapter"] = "adapter"
    served: bool = Field(description="Requests may name it (false once an admin unloaded it).")
    loaded: bool = Field(description="Resident in the engine now.")
    pinned: bool = False
    description: str = ""
    created: datetime
    base: str
    rank: int
    alpha: float
    target_modules: list[str]
    template_sha256: str
    template_ok: bool = Field(description="Trained on the base's chat template.")
    method: str
    recipe: dict[str, Any]
    data_sha256: str | None = None
    data_rows: int | None = None
    metrics: dict[str, Any] = Field(default_factory=dict, description="Loss curves ([step, loss]), eval, steps.")
    version: int | None = Field(None, description="The current version (requests may pin name@version).")
    versions: list[dict[str, Any]] = Field(default_factory=list, description="Kept versions, newest first.")


def _public_recipe(recipe: dict[str, Any]) -> dict[str, Any]:
    return {k: (Path(v).name if k in PATH_KEYS and isinstance(v, str) else v) for k, v in recipe.items()}


@router.get("/v1/adapters/{name}", response_model=AdapterDetail, summary="One adapter's manifest and loss curves")
async def adapter_detail(name: str, request: Request) -> AdapterDetail:
    state = request.app.state
    registry = state.registry
    entry = registry.entries.get(name)
    manifest: Manifest
    if entry is not None:
        manifest = entry.manifest
    else:
        try:
            manifest = registry.store.read_manifest(check_name(name))
        except (StoreError, ValueError):
            raise NotFound(f"no adapter {name!r} in the store", param="name", code="adapter_not_found") from None
    resident = await state.engine.resident_loras() if entry is not None else set()
    try:
        history = registry.history(name)
    except NotFound:  # published but never validated into a version (e.g. refused)
        history = []
    return AdapterDetail(
        id=name, served=entry is not None, loaded=entry is not None and entry.target.int_id in resident,
        pinned=bool(entry and entry.pinned), description=manifest.description, created=manifest.created,
        base=manifest.base.name, rank=manifest.rank, alpha=manifest.alpha, target_modules=manifest.target_modules,
        template_sha256=manifest.template_sha256, template_ok=manifest.template_sha256 == state.template_sha256,
        method=manifest.provenance.method, recipe=_public_recipe(manifest.provenance.recipe),
        data_sha256=manifest.provenance.data_sha256, data_rows=manifest.provenance.data_rows,
        metrics=manifest.metrics, version=entry.version if entry is not None else None, versions=history)
