"""Installed layout and CLI: one `loradock` namespace, and --help on every command."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from loradock.cli import app
from tests.conftest import REPO


def test_only_the_loradock_namespace_is_installed(tmp_path):
    code = ("import importlib, json\n"
            "bad = [n for n in ('core', 'serve', 'train', 'ui') if importlib.util.find_spec(n)]\n"
            "import loradock.core.template as t, loradock.serve.app as a\n"
            "print(json.dumps([bad, t.__file__, a.__file__]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    import json

    bad, template_file, app_file = json.loads(out.stdout)
    assert bad == []
    assert template_file == str(REPO / "core" / "template.py") and app_file == str(REPO / "serve" / "app.py")


def _commands(group: object, path: tuple[str, ...] = ()) -> list[list[str]]:
    """Every command and group of the CLI, read from the Typer app itself (no hand-kept list)."""
    out = [list(path)]
    for name, sub in getattr(group, "commands", {}).items():
        out += _commands(sub, (*path, name))
    return out


COMMANDS = _commands(typer.main.get_command(app))


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "loradock")
def test_every_command_has_help(command):
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output and len(result.output) > 200


def test_adapters_validate_reports_refusals(tmp_path, base_info):
    import json

    from loradock.core.store import AdapterStore
    from loradock.core.synthetic import make_synthetic_adapters

    store = AdapterStore(tmp_path / "store")
    make_synthetic_adapters(store, base_info, ["fine", "stale"])
    manifest = json.loads((store.path("stale") / "manifest.json").read_text())
    manifest["template_sha256"] = "0" * 64
    (store.path("stale") / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(app, ["adapters", "validate", "--adapters-dir", str(store.root)])
    assert result.exit_code == 1
    assert "ok       fine" in result.output and "refused  stale: [template_mismatch]" in result.output
    listing = CliRunner().invoke(app, ["adapters", "list", "--adapters-dir", str(store.root)], env={"COLUMNS": "200"})
    assert "fine" in listing.output and "template_mismatch" in listing.output
