"""GET /v1/models: the base (parent null) and every valid adapter in the store."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from loradock.serve.auth import require_api_key, require_ready
from loradock.serve.schemas import ModelCard, ModelList

router = APIRouter(dependencies=[Depends(require_ready), Depends(require_api_key)])


@router.get("/v1/models", response_model=ModelList, summary="List the base model and servable adapters")
async def list_models(request: Request) -> ModelList:
    state = request.app.state
    base, registry = state.settings.served_base_name, state.registry
    await registry.sync()
    resident = await state.engine.resident_loras()
    admin = getattr(request.state, "admin", False)  # server paths are for admin-key callers only
    cards = [ModelCard(id=base, root=str(state.settings.base_model) if admin else None, loaded=True,
                       max_model_len=state.settings.max_model_len, template_sha256=state.template_sha256)]
    for name in registry.names():
        e = registry.entries[name]
        m = e.manifest
        cards.append(ModelCard(id=name, created=int(m.created.timestamp()),
                               root=e.target.path if admin else None, parent=base,
                               max_model_len=state.settings.max_model_len, loaded=e.target.int_id in resident,
                               rank=m.rank, template_sha256=m.template_sha256, pinned=e.pinned,
                               description=m.description, version=e.version, content_sha256=e.content_sha256))
    state.metrics.resident.set(len(resident))
    state.metrics.adapters.set(len(registry.names()))
    return ModelList(data=cards)
