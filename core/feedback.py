"""Preference records (chosen/rejected pairs) in a real database through SQLAlchemy 2.

SQLite is the default (``sqlite:///var/loradock.db``), in WAL mode with ``synchronous=FULL``: :meth:`add`
returns only after the record is committed and on disk. Any other SQLAlchemy URL works through
``LORADOCK_DB_URL``. Ties and both-bad votes are stored, but only real pairs (verdict ``a``/``b``) are
exported as TRL conversational DPO rows: ``{"prompt": [...], "chosen": [...], "rejected": [...]}``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import JSON, DateTime, String, Text, cast, create_engine, delete, event, func, or_, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from loradock.core.io import write_jsonl
from loradock.core.template import TemplateError, normalize_messages, template_sha256

log = logging.getLogger(__name__)

Verdict = Literal["a", "b", "tie", "both_bad"]
Approach = Literal["prompting", "rag", "adapter", "base", "app"]
VERDICTS: tuple[str, ...] = get_args(Verdict)
APPROACHES: tuple[str, ...] = get_args(Approach)
PAIR_VERDICTS = ("a", "b")  # the only verdicts that make a chosen/rejected pair


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


class PreferenceIn(BaseModel):
    """A record to store. ``prompt`` is the conversation both answers reply to, ending with a user turn."""

    model_config = ConfigDict(extra="forbid")

    prompt: list[dict[str, Any]] = Field(min_length=1)
    chosen: str
    rejected: str
    verdict: Verdict = "a"
    chosen_model: str | None = Field(None, max_length=128)
    rejected_model: str | None = Field(None, max_length=128)
    chosen_approach: Approach = "app"
    rejected_approach: Approach = "app"
    annotator: str | None = Field(None, max_length=128)
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
        return messages

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


def dpo_row(record: PreferenceRecord | PreferenceIn) -> dict[str, Any]:
    """TRL's conversational preference row for a record."""
    return {"prompt": record.prompt,
            "chosen": [{"role": "assistant", "content": record.chosen}],
            "rejected": [{"role": "assistant", "content": record.rejected}]}


def _sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    return None if parsed.database.startswith("file:") else Path(parsed.database)


def _on_sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")  # a commit is on disk when it returns
    cursor.execute("PRAGMA busy_timeout=10000")  # the UI and the server may write at once
    cursor.close()


class FeedbackStore:
    """Preference records in the database at ``db_url``. Thread-safe; one engine per instance."""

    def __init__(self, db_url: str) -> None:
        self.url = db_url
        path = _sqlite_path(db_url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(db_url)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _on_sqlite_connect)
        _Base.metadata.create_all(self.engine)
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

    def list(self, verdict: str | None = None, approach: str | None = None, model: str | None = None,
             annotator: str | None = None, text: str | None = None, pairs_only: bool = False,
             limit: int | None = 500, offset: int = 0, newest_first: bool = True) -> list[PreferenceRecord]:
        """Records matching all given filters. ``approach``/``model`` match either side; ``text`` is a
        case-insensitive substring of the prompt, chosen or rejected text."""
        query = select(PreferenceRow)
        if verdict:
            if verdict not in VERDICTS:
                raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
            query = query.where(PreferenceRow.verdict == verdict)
        if pairs_only:
            query = query.where(PreferenceRow.verdict.in_(PAIR_VERDICTS))
        if approach:
            query = query.where(or_(PreferenceRow.chosen_approach == approach,
                                    PreferenceRow.rejected_approach == approach))
        if model:
            query = query.where(or_(PreferenceRow.chosen_model == model,
                                    PreferenceRow.rejected_model == model))
        if annotator:
            query = query.where(PreferenceRow.annotator == annotator)
        if text:
            needle = f"%{text.lower()}%"
            query = query.where(or_(func.lower(PreferenceRow.chosen).like(needle),
                                    func.lower(PreferenceRow.rejected).like(needle),
                                    func.lower(cast(PreferenceRow.prompt, Text)).like(needle)))
        order = PreferenceRow.created.desc() if newest_first else PreferenceRow.created.asc()
        query = query.order_by(order, PreferenceRow.id).offset(offset)
        if limit is not None:
            query = query.limit(limit)
        with self._session() as session:
            return [_record(row) for row in session.scalars(query)]

    def count(self) -> int:
        """Number of stored records."""
        with self._session() as session:
            return int(session.scalar(select(func.count()).select_from(PreferenceRow)) or 0)

    def stats(self) -> dict[str, Any]:
        """Counts per verdict, exportable pairs, and win rates per approach and per adapter.

        A side wins when its answer was chosen in an ``a``/``b`` vote;
        ``win_rate = (wins + ties / 2) / games``, where both-bad votes count as games won by neither side.
        """
        cols = (PreferenceRow.verdict, PreferenceRow.chosen_approach, PreferenceRow.rejected_approach,
                PreferenceRow.chosen_model, PreferenceRow.rejected_model)
        with self._session() as session:
            rows = session.execute(select(*cols)).all()
        verdicts = dict.fromkeys(VERDICTS, 0)
        per_approach: dict[str, dict[str, Any]] = {}
        per_adapter: dict[str, dict[str, Any]] = {}
        for verdict, c_app, r_app, c_model, r_model in rows:
            verdicts[verdict] = verdicts.get(verdict, 0) + 1
            outcome_c, outcome_r = {"a": ("wins", "losses"), "b": ("wins", "losses"),
                                    "tie": ("ties", "ties")}.get(verdict, ("both_bad", "both_bad"))
            for approach, model, outcome in ((c_app, c_model, outcome_c), (r_app, r_model, outcome_r)):
                _tally(per_approach, approach, outcome)
                if approach == "adapter" and model:
                    _tally(per_adapter, model, outcome)
        return {"total": len(rows), "verdicts": verdicts,
                "pairs": sum(verdicts[v] for v in PAIR_VERDICTS),
                "per_approach": _rates(per_approach), "per_adapter": _rates(per_adapter)}

    # -- export ------------------------------------------------------------------------------------------
    def export_dpo_jsonl(self, path: Path, **filters: Any) -> int:
        """Write real pairs (oldest first) as TRL conversational DPO rows; returns the rows written.

        Ties and both-bad votes are skipped. The file is replaced atomically. ``filters`` as in :meth:`list`.
        """
        records = self.list(pairs_only=True, limit=None, newest_first=False, **filters)
        write_jsonl(Path(path), [dpo_row(record) for record in records])
        log.info("exported %d preference pairs to %s", len(records), path)
        return len(records)


def _record(row: PreferenceRow) -> PreferenceRecord:
    rec = PreferenceRecord.model_validate(row)
    if rec.created.tzinfo is None:  # SQLite drops the zone; values are stored in UTC
        rec.created = rec.created.replace(tzinfo=UTC)
    return rec


def _tally(table: dict[str, dict[str, Any]], key: str, outcome: str) -> None:
    entry = table.setdefault(key, {"games": 0, "wins": 0, "losses": 0, "ties": 0, "both_bad": 0})
    entry["games"] += 1
    entry[outcome] += 1


def _rates(table: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    for entry in table.values():
        entry["win_rate"] = round((entry["wins"] + entry["ties"] / 2) / entry["games"], 4)
    return dict(sorted(table.items()))
