"""POST /v1/feedback: auth, OpenAI-shaped 4xx for bad records, and records that survive a server restart."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from loradock.core.feedback import FeedbackStore
from loradock.core.procs import NotHealthy, free_port, log_tail, start_logged, stop, wait_healthy
from tests.conftest import REPO

ROW = {"prompt": [{"role": "user", "content": "How long is the Zephyr-9 warranty?"}],
       "chosen": [{"role": "assistant", "content": "Two years from delivery."}],
       "rejected": [{"role": "assistant", "content": "It has no warranty."}]}


def _row(i: int, **extra: object) -> dict:
    chosen = [{"role": "assistant", "content": f"Two years from delivery. ({i})"}]
    return {**ROW, "chosen": chosen, **extra}


def _start(port: int, env: dict[str, str], log: Path) -> subprocess.Popen:
    proc = start_logged(
        [sys.executable, "-m", "uvicorn", "--factory", "tests.serve.feedback_server:build",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"], log, env=env, cwd=REPO)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc, timeout=120, interval=0.3)
    except NotHealthy as e:
        stop(proc)
        raise AssertionError(f"the app did not come up ({e}): {log_tail(log)}") from e
    return proc


def test_feedback_records_survive_a_killed_server(tmp_path: Path, db_url: str) -> None:
    env = {**os.environ, "LORADOCK_DB_URL": db_url,
           "LORADOCK_API_KEY": "k-api", "LORADOCK_ADMIN_KEY": "k-admin",
           "LORADOCK_ADAPTERS_DIR": str(tmp_path / "adapters"), "LORADOCK_RAG_DIR": str(tmp_path / "rag")}
    api, admin = {"Authorization": "Bearer k-api"}, {"Authorization": "Bearer k-admin"}
    log = tmp_path / "server.log"

    port = free_port()
    first = _start(port, env, log)
    try:
        url = f"http://127.0.0.1:{port}/v1/feedback"
        assert httpx.post(url, json=_row(0)).status_code == 401
        acks = [httpx.post(url, json=_row(i, annotator="qa", chosen_model="faq-sft"), headers=api)
                for i in range(3)]
    finally:
        first.kill()  # SIGKILL right after the acknowledgements: no clean shutdown, no flush
        first.wait(timeout=30)
    assert [a.status_code for a in acks] == [200, 200, 200]
    ids = [a.json()["id"] for a in acks]
    assert all(a.json()["object"] == "feedback" and isinstance(a.json()["created"], int) for a in acks)

    port = free_port()
    second = _start(port, env, log)
    try:
        listed = httpx.get(f"http://127.0.0.1:{port}/v1/feedback", headers=admin).json()["data"]
        stats = httpx.get(f"http://127.0.0.1:{port}/v1/feedback/stats", headers=api).json()
        forbidden = httpx.get(f"http://127.0.0.1:{port}/v1/feedback", headers=api)
    finally:
        stop(second)
    assert sorted(r["id"] for r in listed) == sorted(ids)
    assert {r["chosen"] for r in listed} == {f"Two years from delivery. ({i})" for i in range(3)}
    assert stats["total"] == 3 and stats["pairs"] == 3
    assert forbidden.status_code == 401, "listing records needs the admin key"


@pytest.mark.engine
def test_apps_submit_pairs_to_the_real_server(server, client: openai.OpenAI) -> None:
    # The official client's generic post() reaches loradock's extension route with the same key.
    ack = client.post("/feedback", body=_row(1, chosen_model="syn-a", rejected_model=server.base,
                                              chosen_approach="adapter", rejected_approach="base",
                                              annotator="app-test"), cast_to=object)
    assert ack["object"] == "feedback" and ack["id"].startswith("fb-")
    with FeedbackStore(server.db_url) as store:
        record = store.get(ack["id"])
    assert record is not None and record.chosen_model == "syn-a" and record.annotator == "app-test"
    assert record.prompt == ROW["prompt"]


@pytest.mark.engine
@pytest.mark.parametrize(("change", "param", "message"), [
    ({"chosen": [{"role": "user", "content": "x"}]}, "chosen", "one assistant message"),
    ({"rejected": ROW["chosen"]}, None, "identical"),
    ({"prompt": [{"role": "assistant", "content": "hi"}]}, "prompt", "end with a user message"),
    ({"prompt": []}, "prompt", None),
    ({"verdict": "maybe"}, "verdict", None),
    ({"annotater": "typo"}, "annotater", "Extra inputs"),
])
def test_bad_records_get_an_openai_shaped_400(server, client: openai.OpenAI, change: dict,
                                              param: str | None, message: str | None) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.post("/feedback", body={**ROW, **change}, cast_to=object)
    body = err.value.body
    assert set(body) >= {"message", "type", "param", "code"} and body["type"] == "invalid_request_error"
    assert body["param"] == param
    if message:
        assert message in body["message"]


@pytest.mark.engine
def test_feedback_needs_the_api_key(server) -> None:
    r = httpx.post(f"{server.v1}/feedback", json=ROW)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_kill_9_during_a_feedback_burst_loses_no_acknowledged_record(db_url: str) -> None:
    import json

    # The real app and database path; the idle engine makes each restart take a second instead of 30.
    cmd = f"{sys.executable} -m uvicorn --factory tests.serve.feedback_server:build --log-level warning"
    out = subprocess.run([sys.executable, str(REPO / "scripts/feedback_crash.py"), "--quick", "--server-cmd", cmd,
                          "--db-url", db_url], cwd=REPO, capture_output=True, text=True, timeout=300)
    report = json.loads(out.stdout)
    assert report["killed_with_sigkill"] and report["acknowledged"] >= 100, report
    assert report["lost_acknowledged"] == 0, report
    assert out.returncode == 0
