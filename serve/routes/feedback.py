"""POST /v1/feedback: apps submit preference pairs in TRL's conversational shape; stats and listing."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from loradock.core.feedback import Approach, FeedbackStore, PreferenceIn
from loradock.serve.auth import require_admin_key, require_api_key
from loradock.serve.errors import BadRequest, Unavailable
from loradock.serve.schemas import ChatMessage

router = APIRouter(dependencies=[Depends(require_api_key)])


class FeedbackRequest(BaseModel):
    """One preference pair, shaped like a row of `loradock data export --format dpo-jsonl`."""

    model_config = ConfigDict(extra="forbid")

    prompt: list[ChatMessage] = Field(min_length=1, description="The conversation, ending with a user turn.")
    chosen: list[ChatMessage] | str = Field(description="The preferred answer: one assistant message.")
    rejected: list[ChatMessage] | str = Field(description="The other answer: one assistant message.")
    chosen_model: str | None = Field(None, max_length=128)
    rejected_model: str | None = Field(None, max_length=128)
    chosen_approach: Approach = "app"
    rejected_approach: Approach = "app"
    verdict: Literal["a", "b", "tie", "both_bad"] = Field(
        "a", description="'a'/'b': chosen is better (which side was shown first); 'tie' and 'both_bad' are "
                         "stored but never exported as pairs.")
    annotator: str | None = Field(None, max_length=128)

    @field_validator("chosen", "rejected")
    @classmethod
    def _one_answer(cls, v: list[ChatMessage] | str, info: Any) -> list[ChatMessage] | str:
        if isinstance(v, list) and (len(v) != 1 or v[0].role != "assistant"):
            raise ValueError(f"{info.field_name} must be one assistant message, like "
                             '[{"role": "assistant", "content": "..."}]')
        return v


class FeedbackAck(BaseModel):
    id: str
    object: Literal["feedback"] = "feedback"
    created: int


def _text(answer: list[ChatMessage] | str) -> str:
    return answer if isinstance(answer, str) else answer[0].text()


def _store(request: Request) -> FeedbackStore:
    store = getattr(request.app.state, "feedback", None)
    if store is None:
        raise Unavailable("preference storage is not configured on this server (LORADOCK_DB_URL)",
                          code="feedback_disabled")
    return store


@router.post("/v1/feedback", response_model=FeedbackAck,
             summary="Store a preference pair (acknowledged once committed to the database)")
async def post_feedback(body: FeedbackRequest, request: Request) -> FeedbackAck:
    store = _store(request)
    fields = body.model_dump(exclude={"prompt", "chosen", "rejected"})
    try:
        record = PreferenceIn(prompt=[{"role": m.role, "content": m.text()} for m in body.prompt],
                              chosen=_text(body.chosen), rejected=_text(body.rejected), **fields)
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(p) for p in first.get("loc", ())) or None
        raise BadRequest(first["msg"].removeprefix("Value error, "), param=param,
                         code="invalid_feedback") from None
    stored = await asyncio.to_thread(store.add, record)
    return FeedbackAck(id=stored.id, created=int(stored.created.timestamp()))


@router.get("/v1/feedback/stats", summary="Counts per verdict and win rates per approach and per adapter")
async def feedback_stats(request: Request) -> dict[str, Any]:
    return {"object": "feedback.stats", **await asyncio.to_thread(_store(request).stats)}


@router.get("/v1/feedback", dependencies=[Depends(require_admin_key)],
            summary="List stored preference records, newest first (admin)")
async def list_feedback(request: Request, limit: int = Query(100, ge=1, le=1000),
                        offset: int = Query(0, ge=0, le=2**31 - 1),
                        verdict: Literal["a", "b", "tie", "both_bad"] | None = None,
                        model: str | None = None, annotator: str | None = None) -> dict[str, Any]:
    records = await asyncio.to_thread(_store(request).list, verdict=verdict, model=model, annotator=annotator,
                                      limit=limit, offset=offset)
    return {"object": "list", "data": [r.model_dump(mode="json") for r in records]}
