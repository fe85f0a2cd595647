"""Preference records (chosen/rejected pairs) in a real database through SQLAlchemy 2.

SQLite is the default (``sqlite:///var/loradock.db``), in WAL mode with ``synchronous=FULL``: :meth:`add`
returns only after the record is committed and on disk. Any other SQLAlchemy URL works through
``LORADOCK_DB_URL`` (the SQL here is portable: no dialect-only functions, JSON through SQLAlchemy's type).
Ties and both-bad votes are stored, but only real pairs (verdict ``a``/``b``) are exported as TRL
conversational DPO rows: ``{"prompt": [...], "chosen": [...], "rejected": [...]}``.
"""

from __future__ import annotations

import builtins
import json
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    String,
    Text,
    cast,
    create_engine,
    delete,
    event,
    func,
    or_,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.sql import Select

from loradock.core.feedback_db import add_missing_columns, on_sqlite_connect, sqlite_path
from loradock.core.io import write_jsonl
from loradock.core.template import TemplateError, normalize_messages, template_sha256

log = logging.getLogger(__name__)
Q = TypeVar("Q", bound=Select)

Verdict = Literal["a", "b", "tie", "both_bad"]
Approach = Literal["prompting", "rag", "adapter", "base", "app"]
VERDICTS: tuple[str, ...] = get_args(Verdict)
APPROACHES: tuple[str, ...] = get_args(Approach)
PAIR_VERDICTS = ("a", "b")  # the only verdicts that make a chosen/rejected pair
# Per-record caps (issue #13): one record is a vote, not a document store.
MAX_ANSWER_CHARS = 16_000
MAX_PROMPT_MESSAGES = 64
MAX_PROMPT_CHARS = 32_000
MAX_META_BYTES = 16_384


class _Base(DeclarativeBase):
    pass


class PreferenceRow(_Base):
    """One vote. For verdict ``a``/``b`` the winning side is ``chosen``; otherwise side A is ``chosen``."""

    __tablename__ = "preference"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    prompt: Mapped[list[dict[str, str]]] = mapped_column(JSON)
    chosen: Mapped[str] = mapped_column(Text)
    rejected: Mapped[str] = mapped_column(Text)
    verdict: Mapped[str] = mapped_column(String(16), index=True)
    chosen_model: Mapped[str | None] = mapped_column(String(128), index=True)
    rejected_model: Mapped[str | None] = mapped_column(String(128), index=True)
    chosen_approach: Mapped[str] = mapped_column(String(16))
    rejected_approach: Mapped[str] = mapped_column(String(16))
    template_sha256: Mapped[str] = mapped_column(String(64))
    annotator: Mapped[str | None] = mapped_column(String(128), index=True)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Added for blind arena votes and the leaderboard; older databases gain them at start-up (nullable).
    blind: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    shown_order: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    prompt_set: Mapped[str | None] = mapped_column(String(64), index=True, nullable=True)
    chosen_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    rejected_version: Mapped[str | None] = mapped_column(String(64), nullable=True)


class PreferenceIn(BaseModel):
    """A record to store. ``prompt`` is the conversation both answers reply to, ending with a user turn."""

    model_config = ConfigDict(extra="forbid")

    prompt: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_PROMPT_MESSAGES)
    chosen: str = Field(max_length=MAX_ANSWER_CHARS)
    rejected: str = Field(max_length=MAX_ANSWER_CHARS)
    verdict: Verdict = "a"
    chosen_model: str | None = Field(None, max_length=128)
    rejected_model: str | None = Field(None, max_length=128)
    chosen_approach: Approach = "app"
    rejected_approach: Approach = "app"
    chosen_version: str | None = Field(None, max_length=64, description="Adapter version voted on, if any.")
    rejected_version: str | None = Field(None, max_length=64)
    annotator: str | None = Field(None, max_length=128)
    blind: bool = Field(False, description="Identities hidden until after the vote (arena mode).")
    shown_order: list[str] | None = Field(None, min_length=2, max_length=2,
                                          description="What was shown as side A, then side B.")
    prompt_set: str | None = Field(None, max_length=64, description="Which prompt list the prompt came from.")
    template_sha256: str = Field(default_factory=template_sha256, pattern=r"^[0-9a-f]{64}$")
    meta: dict[str, Any] = Field(default_factory=dict, description="Free-form context: latency, passages.")

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: list[dict[str, Any]]) -> list[dict[str, str]]:
        try:
            messages = normalize_messages(v)
        except TemplateError as e:
            raise ValueError(f"prompt: {e}") from e
        if messages[-1]["role"] != "user":
            raise ValueError("prompt must end with a user message (the answers reply to it)")
        if sum(len(m["content"]) for m in messages) > MAX_PROMPT_CHARS:
            raise ValueError(f"prompt is longer than {MAX_PROMPT_CHARS} characters; send a shorter conversation")
        return messages

    @field_validator("shown_order")
    @classmethod
    def _order(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and any(len(s) > 128 for s in v):
            raise ValueError("shown_order entries must be at most 128 characters")
        return v

    @field_validator("meta")
    @classmethod
    def _meta(cls, v: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(v, default=str)) > MAX_META_BYTES:
            raise ValueError(f"meta is larger than {MAX_META_BYTES} bytes as JSON; keep only short context")
        return v

    @model_validator(mode="after")
    def _pair(self) -> PreferenceIn:
        if self.verdict in PAIR_VERDICTS:
            if not self.chosen.strip():
                raise ValueError("chosen is empty; a preference pair needs a preferred answer")
            if self.chosen == self.rejected:
                raise ValueError("chosen and rejected are identical; send two different answers "
                                 "(or the verdict 'tie')")
        return self


class PreferenceRecord(PreferenceIn):
    """A stored record."""

    model_config = ConfigDict(extra="forbid", from_attributes=True)

    id: str
    created: datetime
    blind: bool = False


class FeedbackFilter(BaseModel):
    """Which records a listing, an export or a leaderboard uses. Every given field must match."""

    model_config = ConfigDict(extra="forbid")

    verdict: Verdict | None = None
    approach: Approach | None = Field(default=None, description="Either side used this approach.")
    model: str | None = Field(default=None, description="Either side is this model or adapter.")
    annotator: str | None = None
    text: str | None = Field(default=None, description="Case-insensitive substring of the prompt or either answer.")
    prompt_set: str | None = None
    since: datetime | None = Field(default=None, description="Created at or after (UTC when no zone is given).")
    until: datetime | None = Field(default=None, description="Created before.")
    blind: bool | None = Field(default=None, description="Only blind (true) or only named (false) votes.")

    @field_validator("since", "until")
    @classmethod
    def _in_utc(cls, v: datetime | None) -> datetime | None:
        try:
            return None if v is None else _utc(v)
        except OverflowError:  # within a day of the calendar's ends: clamp (a query filter, never an error)
            assert v is not None
            return (datetime.max if v.year > 1 else datetime.min).replace(tzinfo=UTC)

    def apply(self, query: Q) -> Q:
        """The query restricted to matching rows."""
        row = PreferenceRow
        conditions = []
        if self.verdict:
            conditions.append(row.verdict == self.verdict)
        if self.approach:
            conditions.append(or_(row.chosen_approach == self.approach, row.rejected_approach == self.approach))
        if self.model:
            conditions.append(or_(row.chosen_model == self.model, row.rejected_model == self.model))
        if self.annotator:
            conditions.append(row.annotator == self.annotator)
        if self.prompt_set:
            conditions.append(row.prompt_set == self.prompt_set)
        if self.since:
            conditions.append(row.created >= self.since)
        if self.until:
            conditions.append(row.created < self.until)
        if self.blind is True:
            conditions.append(row.blind.is_(True))
        elif self.blind is False:
            conditions.append(or_(row.blind.is_(False), row.blind.is_(None)))
        if self.text:
            needle = f"%{self.text.lower()}%"
            conditions.append(or_(func.lower(row.chosen).like(needle), func.lower(row.rejected).like(needle),
                                  func.lower(cast(row.prompt, Text)).like(needle)))
        return query.where(*conditions) if conditions else query


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def dpo_row(record: PreferenceRecord | PreferenceIn) -> dict[str, Any]:
    """TRL's conversational preference row for a record."""
    return {"prompt": record.prompt,
            "chosen": [{"role": "assistant", "content": record.chosen}],
            "rejected": [{"role": "assistant", "content": record.rejected}]}


class FeedbackStore:
    """Preference records in the database at ``db_url``. Thread-safe; one engine per instance."""

    def __init__(self, db_url: str) -> None:
        self.url = db_url
        path = sqlite_path(db_url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(db_url)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", on_sqlite_connect)
        _Base.metadata.create_all(self.engine)
        add_missing_columns(self.engine, PreferenceRow.__table__)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()

    def __enter__(self) -> FeedbackStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with self._sessions() as session:
            yield session

    # -- writing -----------------------------------------------------------------------------------------
    def add(self, record: PreferenceIn | dict[str, Any]) -> PreferenceRecord:
        """Validate and store a record; returns it once the transaction is committed."""
        rec = record if isinstance(record, PreferenceIn) else PreferenceIn.model_validate(record)
        row = PreferenceRow(id=f"fb-{uuid.uuid4().hex[:24]}", created=datetime.now(UTC), **rec.model_dump())
        with self._session() as session, session.begin():
            session.add(row)
        log.info("stored preference %s (%s: %s vs %s)", row.id, row.verdict, row.chosen_model,
                 row.rejected_model)
        return _record(row)

    def delete(self, record_id: str) -> bool:
        """Delete a record; False if there was none with this id."""
        with self._session() as session, session.begin():
            result = session.execute(delete(PreferenceRow).where(PreferenceRow.id == record_id))
        return bool(getattr(result, "rowcount", 0))

    # -- reading -----------------------------------------------------------------------------------------
    def get(self, record_id: str) -> PreferenceRecord | None:
        """One record by id."""
        with self._session() as session:
            row = session.get(PreferenceRow, record_id)
            return None if row is None else _record(row)

    def list(self, filters: FeedbackFilter | None = None, *, pairs_only: bool = False, limit: int | None = 500,
             offset: int = 0, newest_first: bool = True, **fields: Any) -> list[PreferenceRecord]:
        """Records matching ``filters`` (or the same fields as keywords, see :class:`FeedbackFilter`)."""
        filt = filters or FeedbackFilter(**{k: v for k, v in fields.items() if v is not None})
        query = filt.apply(select(PreferenceRow))
        if pairs_only:
            query = query.where(PreferenceRow.verdict.in_(PAIR_VERDICTS))
        order = PreferenceRow.created.desc() if newest_first else PreferenceRow.created.asc()
        query = query.order_by(order, PreferenceRow.id).offset(offset)
        if limit is not None:
            query = query.limit(limit)
        with self._session() as session:
            return [_record(row) for row in session.scalars(query)]

    def count(self, filters: FeedbackFilter | None = None) -> int:
        """Number of stored records (matching ``filters``)."""
        query = (filters or FeedbackFilter()).apply(select(func.count()).select_from(PreferenceRow))
        with self._session() as session:
            return int(session.scalar(query) or 0)

    def stats(self, filters: FeedbackFilter | None = None) -> dict[str, Any]:
        """Counts per verdict, exportable pairs, and win rates per approach and per adapter, in SQL.

        A side wins when its answer was chosen in an ``a``/``b`` vote;
        ``win_rate = (wins + ties / 2) / games``, where both-bad votes count as games won by neither side.
        """
        row, filt = PreferenceRow, filters or FeedbackFilter()
        n = func.count().label("n")
        with self._session() as session:
            verdicts = dict.fromkeys(VERDICTS, 0)
            for verdict, count in session.execute(filt.apply(select(row.verdict, n).group_by(row.verdict))):
                verdicts[verdict] = int(count)
            per_approach: dict[str, dict[str, Any]] = {}
            per_adapter: dict[str, dict[str, Any]] = {}
            for chosen, approach, model in ((True, row.chosen_approach, row.chosen_model),
                                            (False, row.rejected_approach, row.rejected_model)):
                query = select(approach, model, row.verdict, n).group_by(approach, model, row.verdict)
                for app, name, verdict, count in session.execute(filt.apply(query)):
                    outcome = _outcome(verdict, chosen)
                    _tally(per_approach, app, outcome, int(count))
                    if app == "adapter" and name:
                        _tally(per_adapter, name, outcome, int(count))
        return {"total": sum(verdicts.values()), "verdicts": verdicts,
                "pairs": sum(verdicts[v] for v in PAIR_VERDICTS),
                "per_approach": _rates(per_approach), "per_adapter": _rates(per_adapter)}

    def battles(self, filters: FeedbackFilter | None = None) -> builtins.list[dict[str, Any]]:
        """Votes grouped by both sides' identity and the verdict, counted in SQL (the leaderboard's input)."""
        row = PreferenceRow
        cols = (row.verdict, row.chosen_approach, row.chosen_model, row.chosen_version,
                row.rejected_approach, row.rejected_model, row.rejected_version)
        query = (filters or FeedbackFilter()).apply(select(*cols, func.count().label("n")).group_by(*cols))
        with self._session() as session:
            return [{"verdict": r[0], "chosen": {"approach": r[1], "model": r[2], "version": r[3]},
                     "rejected": {"approach": r[4], "model": r[5], "version": r[6]}, "count": int(r[7])}
                    for r in session.execute(query)]

    # -- export ------------------------------------------------------------------------------------------
    def pairs(self, filters: FeedbackFilter | None = None) -> builtins.list[PreferenceRecord]:
        """Real pairs (verdict a/b), oldest first: what an export starts from."""
        return self.list(filters or FeedbackFilter(), pairs_only=True, limit=None, newest_first=False)

    def export_dpo_jsonl(self, path: Path, filters: FeedbackFilter | None = None, **fields: Any) -> int:
        """Write real pairs (oldest first) as TRL conversational DPO rows; returns the rows written.

        Ties and both-bad votes are skipped. The file is replaced atomically. For quality flags
        (contradictions, near-duplicates) use :func:`loradock.core.feedback_quality.select_pairs`.
        """
        filt = filters or FeedbackFilter(**{k: v for k, v in fields.items() if v is not None})
        records = self.pairs(filt)
        write_jsonl(Path(path), [dpo_row(record) for record in records])
        log.info("exported %d preference pairs to %s", len(records), path)
        return len(records)


def _record(row: PreferenceRow) -> PreferenceRecord:
    data = {c.key: getattr(row, c.key) for c in PreferenceRow.__table__.columns}
    data["blind"] = bool(data.get("blind"))
    rec = PreferenceRecord.model_validate(data)
    if rec.created.tzinfo is None:  # SQLite drops the zone; values are stored in UTC
        rec.created = rec.created.replace(tzinfo=UTC)
    return rec


def _outcome(verdict: str, chosen_side: bool) -> str:
    if verdict in PAIR_VERDICTS:
        return "wins" if chosen_side else "losses"
    return "ties" if verdict == "tie" else "both_bad"


def _tally(table: dict[str, dict[str, Any]], key: str, outcome: str, count: int = 1) -> None:
    entry = table.setdefault(key, {"games": 0, "wins": 0, "losses": 0, "ties": 0, "both_bad": 0})
    entry["games"] += count
    entry[outcome] += count


def _rates(table: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    for entry in table.values():
        entry["win_rate"] = round((entry["wins"] + entry["ties"] / 2) / entry["games"], 4)
    return dict(sorted(table.items()))
