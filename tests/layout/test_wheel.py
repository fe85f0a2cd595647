"""The built wheel: every room installs as ``loradock.<room>`` with its data files, and imports from the wheel."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.layout.test_rooms import rooms

IMPORT_ALL = """
import importlib, json, pkgutil, sys
sys.path.insert(0, sys.argv[1])
import loradock
mods = [m.name for m in pkgutil.walk_packages(loradock.__path__, "loradock.")]
files = {name: importlib.import_module(name).__file__ for name in mods}
print(json.dumps(files))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(REPO)], check=True, capture_output=True, timeout=300)
    (path,) = out.glob("loradock-*.whl")
    return path


def test_wheel_holds_every_room_and_its_data(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    packages = {n.rsplit("/", 1)[0].replace("/", ".") for n in names if n.endswith("/__init__.py")}
    assert {f"loradock.{room}" for room in rooms()} <= packages
    assert not [n for n in names if n.startswith(("tests/", "core/", "serve/"))], "rooms install under loradock/"
    assert "loradock/core/chat_template.jinja" in names
    assert any(n.startswith("loradock/train/recipes/sft/") and n.endswith(".yaml") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "loradock = loradock.cli:app" in text and "loradock.plugin.register:register" in text


def test_every_module_imports_from_the_wheel(wheel: Path, tmp_path: Path) -> None:
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    out = subprocess.run([sys.executable, "-c", IMPORT_ALL, str(tmp_path / "site")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    files = json.loads(out.stdout)
    assert {f"loradock.{room}" for room in rooms()} <= set(files)
    outside = {name: f for name, f in files.items() if not f.startswith(str(tmp_path / "site"))}
    assert not outside, f"imported from outside the wheel: {outside}"
