"""Preference feedback: apps and the UI store votes (POST /v1/feedback, rate-limited per key); anyone with the
API key reads SQL-computed stats and the leaderboard; admins list, delete, check and export the records."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from loradock.core.feedback import (
    MAX_ANSWER_CHARS,
    Approach,
    FeedbackFilter,
    FeedbackStore,
    PreferenceIn,
)
from loradock.core.feedback_quality import QualityOptions, assess, select_pairs
from loradock.core.leaderboard import Level, leaderboard
from loradock.serve.auth import require_admin_key, require_api_key
from loradock.serve.errors import BadRequest, NotFound, Unavailable
from loradock.serve.ratelimit import feedback_limit
from loradock.serve.schemas import ChatMessage

router = APIRouter(dependencies=[Depends(require_api_key)])
Filters = Annotated[FeedbackFilter, Depends()]


class FeedbackRequest(BaseModel):
    """One preference pair, shaped like a row of `loradock data export --format dpo-jsonl`."""

    model_config = ConfigDict(extra="forbid")

    prompt: list[ChatMessage] = Field(min_length=1, max_length=64,
                                      description="The conversation, ending with a user turn.")
    chosen: list[ChatMessage] | str = Field(description="The preferred answer: one assistant message.")
    rejected: list[ChatMessage] | str = Field(description="The other answer: one assistant message.")
    chosen_model: str | None = Field(None, max_length=128)
    rejected_model: str | None = Field(None, max_length=128)
    chosen_approach: Approach = "app"
    rejected_approach: Approach = "app"
    chosen_version: str | None = Field(None, max_length=64, description="The chosen adapter's version.")
    rejected_version: str | None = Field(None, max_length=64)
    verdict: Literal["a", "b", "tie", "both_bad"] = Field(
        "a", description="'a'/'b': chosen is better (which side was shown first); 'tie' and 'both_bad' are "
                         "stored but never exported as pairs.")
    annotator: str | None = Field(None, max_length=128)
    blind: bool = Field(False, description="The annotator did not see which model answered (arena mode).")
    shown_order: list[str] | None = Field(None, min_length=2, max_length=2,
                                          description="What was shown as side A and as side B.")
    prompt_set: str | None = Field(None, max_length=64, description="The prompt list the prompt came from.")
    meta: dict[str, Any] = Field(default_factory=dict, description="Short free-form context (at most 16 KB).")

    @field_validator("chosen", "rejected")
    @classmethod
    def _one_answer(cls, v: list[ChatMessage] | str, info: Any) -> list[ChatMessage] | str:
        if isinstance(v, list) and (len(v) != 1 or v[0].role != "assistant"):
            raise ValueError(f"{info.field_name} must be one assistant message, like "
                             '[{"role": "assistant", "content": "..."}]')
        if len(_text(v)) > MAX_ANSWER_CHARS:
            raise ValueError(f"{info.field_name} is longer than {MAX_ANSWER_CHARS} characters")
        return v


class FeedbackAck(BaseModel):
    id: str
    object: Literal["feedback"] = "feedback"
    created: int


class ExportRequest(BaseModel):
    """Which records to export and which flagged ones to drop."""

    model_config = ConfigDict(extra="forbid")

    filters: FeedbackFilter = Field(default_factory=FeedbackFilter)
    quality: QualityOptions = Field(default_factory=QualityOptions)


def _text(answer: list[ChatMessage] | str) -> str:
    return answer if isinstance(answer, str) else answer[0].text()


def _store(request: Request) -> FeedbackStore:
    store = getattr(request.app.state, "feedback", None)
    if store is None:
        raise Unavailable("preference storage is not configured on this server (LORADOCK_DB_URL)",
                          code="feedback_disabled")
    return store


@router.post("/v1/feedback", response_model=FeedbackAck, dependencies=[Depends(feedback_limit)],
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
async def feedback_stats(request: Request, filters: Filters) -> dict[str, Any]:
    return {"object": "feedback.stats", **await asyncio.to_thread(_store(request).stats, filters)}


@router.get("/v1/feedback/leaderboard",
            summary="Bradley-Terry ratings with 95% intervals and head-to-head win rates")
async def feedback_leaderboard(request: Request, filters: Filters,
                               level: Level = Query("adapter", description="approach, adapter or version"),
                               ) -> dict[str, Any]:
    battles = await asyncio.to_thread(_store(request).battles, filters)
    return await asyncio.to_thread(leaderboard, battles, level)


@router.get("/v1/feedback", dependencies=[Depends(require_admin_key)],
            summary="List stored preference records, newest first (admin)")
async def list_feedback(request: Request, filters: Filters, limit: int = Query(100, ge=1, le=1000),
                        offset: int = Query(0, ge=0, le=2**31 - 1)) -> dict[str, Any]:
    store = _store(request)
    records = await asyncio.to_thread(store.list, filters, limit=limit, offset=offset)
    total = await asyncio.to_thread(store.count, filters)
    return {"object": "list", "total": total, "data": [r.model_dump(mode="json") for r in records]}


@router.delete("/v1/feedback/{record_id}", dependencies=[Depends(require_admin_key)],
               summary="Delete one preference record (admin)")
async def delete_feedback(record_id: str, request: Request) -> dict[str, Any]:
    if not await asyncio.to_thread(_store(request).delete, record_id):
        raise NotFound(f"no feedback record {record_id!r}", param="record_id", code="feedback_not_found")
    return {"id": record_id, "object": "feedback", "deleted": True}


@router.get("/v1/feedback/quality", dependencies=[Depends(require_admin_key)],
            summary="Contradictory votes, agreement per annotator, near-duplicate prompts (admin)")
async def feedback_quality(request: Request, filters: Filters) -> dict[str, Any]:
    records = await asyncio.to_thread(_store(request).pairs, filters)
    report = await asyncio.to_thread(assess, records)
    return {"object": "feedback.quality", "pairs": len(records), **report.summary(),
            "flags": {rid: flags for rid, flags in report.flags.items() if flags}}


@router.post("/v1/feedback/export", dependencies=[Depends(require_admin_key)],
             summary="Real pairs as TRL conversational DPO rows, flagged ones dropped or kept (admin)")
async def export_feedback(body: ExportRequest, request: Request) -> dict[str, Any]:
    records = await asyncio.to_thread(_store(request).pairs, body.filters)
    rows, report = await asyncio.to_thread(select_pairs, records, body.quality)
    return {"object": "feedback.export", "data": rows, "report": report}
