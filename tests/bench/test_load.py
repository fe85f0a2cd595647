"""The quick load test (`python -m loradock.bench.loadtest --quick`) on the shared server: no 5xx, flat memory."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.engine


def test_quick_load_has_no_server_errors_and_flat_memory(server):
    out = subprocess.run([sys.executable, "-m", "loradock.bench.loadtest", "--server", server.url,
                          "--api-key", server.api_key, "--quick"], capture_output=True, text=True, timeout=300)
    report = json.loads(out.stdout)
    assert report["server_5xx"] == 0 and report["errors"] == [], report
    assert report["completed"] > 0 and report.get("incomplete", 0) == 0, report
    assert report["rss_growth"] < 0.10, report
    assert out.returncode == 0
