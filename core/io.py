"""File I/O every room shares: JSON-lines reading and atomic replacement of a file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


class JSONLineError(ValueError):
    """A line of a JSON-lines file is not valid JSON; ``lineno`` says which."""

    def __init__(self, path: Path, lineno: int, error: json.JSONDecodeError) -> None:
        super().__init__(f"{path}:{lineno}: not valid JSON ({error.msg} at column {error.colno})")
        self.path, self.lineno, self.error = path, lineno, error


def iter_jsonl(path: Path, on_error: Callable[[JSONLineError], Any] | None = None) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` for each non-blank line of a JSON-lines file (numbers start at 1).

    A line that is not valid JSON raises :class:`JSONLineError`, unless ``on_error`` is given: then its
    return value is yielded in place of the parsed line.
    """
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                err = JSONLineError(Path(path), lineno, e)
                if on_error is None:
                    raise err from e
                yield lineno, on_error(err)


def read_jsonl(path: Path) -> list[Any]:
    """Every value of a JSON-lines file (blank lines skipped); a bad line raises :class:`JSONLineError`."""
    return [value for _, value in iter_jsonl(path)]


def atomic_write(path: Path, write: Callable[[IO[bytes]], None], mode: int = 0o644) -> Path:
    """Replace ``path`` with what ``write(file)`` writes, atomically: readers see the old file or the new one.

    The data goes to a temporary file in the same folder, is fsynced, then renamed over ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp makes it private; a server may run as another user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_jsonl(path: Path, rows: Iterator[Any] | list[Any]) -> int:
    """Replace ``path`` atomically with one JSON value per line; returns the number of lines."""
    count = 0

    def write(f: IO[bytes]) -> None:
        nonlocal count
        for row in rows:
            f.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
            count += 1

    atomic_write(path, write)
    return count
