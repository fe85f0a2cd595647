"""The house rule, read from the code: one room per product, and imports point down only.

``core`` is imported by all and imports none of them; ``rag`` and ``plugin`` import only ``core``; ``serve``
may import ``rag`` and ``plugin``; ``train`` imports only ``core``; ``ui``, ``bench`` and ``evals`` reach the
server over HTTP, so they import ``core`` only. The ``loradock`` package is the CLI root above them all.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

ALLOWED = {
    "core": set(),
    "rag": {"core"},
    "plugin": {"core"},
    "serve": {"core", "rag", "plugin"},
    "train": {"core"},
    "ui": {"core"},
    "bench": {"core"},
    "evals": {"core"},
}
MAX_LINES = 400
# Literal data, one job each (question banks, demo rows): exempt from the size rule.
DATA_BANKS = {"scripts/demo_data_bank.py"}


def rooms() -> list[str]:
    """Every top-level folder that is a package, except the CLI root and the tests."""
    return sorted(p.parent.name for p in REPO.glob("*/__init__.py") if p.parent.name not in ("loradock", "tests"))


def imported_rooms(path: Path) -> set[str]:
    """The rooms a file imports (``loradock.<room>...``), at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "loradock" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_every_room_has_a_rule() -> None:
    assert set(rooms()) == set(ALLOWED), "a new room needs its line in ALLOWED (and README's diagram)"


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_imports_point_down_only(room: str) -> None:
    bad = {}
    for path in sorted((REPO / room).rglob("*.py")):
        wrong = imported_rooms(path) - ALLOWED[room] - {room} - {"__version__"}
        if wrong:
            bad[str(path.relative_to(REPO))] = sorted(wrong)
    assert not bad, f"{room}/ may import only {sorted(ALLOWED[room]) or 'nothing above it'}: {bad}"


def test_the_rule_test_sees_imports_inside_functions(tmp_path: Path) -> None:
    sample = tmp_path / "x.py"
    sample.write_text("def f():\n    from loradock.serve.app import create_app\n    import loradock.train.sft\n")
    assert imported_rooms(sample) == {"serve", "train"}


def test_no_source_file_is_over_the_size_limit() -> None:
    tracked = [p for p in REPO.rglob("*.py") if ".venv" not in p.parts and "models" not in p.parts
               and str(p.relative_to(REPO)) not in DATA_BANKS and "build" not in p.parts]
    long = {str(p.relative_to(REPO)): n for p in tracked if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these by responsibility (limit {MAX_LINES} lines): {long}"


# The UI reaches votes, records and adapters only through the server's routes (issue #12).
UI_FORBIDDEN = ("loradock.core.feedback", "loradock.core.store", "loradock.core.versions", "loradock.core.leaderboard",
                "sqlalchemy")


def _imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_the_ui_opens_no_database_and_reads_no_store() -> None:
    bad = {str(p.relative_to(REPO)): sorted(m for m in _imported_modules(p) if m.startswith(UI_FORBIDDEN))
           for p in sorted((REPO / "ui").rglob("*.py"))}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"ui/ talks to the server over HTTP only (votes, records, adapters): {bad}"
