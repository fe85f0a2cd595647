"""POST /v1/chat/completions and /v1/completions."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from loradock.serve.auth import require_api_key, require_ready
from loradock.serve.chat import ChatWire, prepare_chat
from loradock.serve.completions import CompletionWire, prepare_completion
from loradock.serve.schemas import ChatCompletionRequest, CompletionRequest

router = APIRouter(dependencies=[Depends(require_ready), Depends(require_api_key)])


@router.post("/v1/chat/completions", summary="Chat completion (base model or an adapter named in `model`)")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    return await request.app.state.generation.handle(ChatWire, body, request, prepare_chat)


@router.post("/v1/completions", summary="Text completion on a raw prompt (no chat template)")
async def completions(body: CompletionRequest, request: Request) -> Response:
    return await request.app.state.generation.handle(CompletionWire, body, request, prepare_completion)
