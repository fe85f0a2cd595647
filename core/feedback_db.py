"""Database plumbing for the preference store: SQLite durability settings and adding new columns in place."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import Table, inspect, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError

log = logging.getLogger(__name__)


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL (None for other databases and in-memory SQLite)."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    return None if parsed.database.startswith("file:") else Path(parsed.database)


def on_sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    """WAL and synchronous=FULL on every SQLite connection: an acknowledged commit is on disk."""
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")  # a commit is on disk when it returns
    cursor.execute("PRAGMA busy_timeout=10000")  # the server and a CLI may write at once
    cursor.close()


def add_missing_columns(engine: Engine, table: Table) -> None:
    """Bring a table made by an older loradock up to date: add its missing (nullable) columns and indexes.

    Portable DDL (``ALTER TABLE ... ADD COLUMN``), the same on SQLite and PostgreSQL.
    """
    def columns() -> set[str]:
        return {c["name"] for c in inspect(engine).get_columns(table.name)}

    have = columns()
    for column in table.columns:
        if column.name in have:
            continue
        ddl = f"ALTER TABLE {table.name} ADD COLUMN {column.name} {column.type.compile(engine.dialect)}"
        try:
            with engine.begin() as conn:
                conn.execute(text(ddl))
            log.info("%s: added column %s", table.name, column.name)
        except DBAPIError:  # another process added it first
            if column.name not in columns():
                raise
    for index in table.indexes:
        index.create(engine, checkfirst=True)
