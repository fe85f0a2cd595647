"""POST /v1/feedback: auth, OpenAI-shaped 4xx for bad records, and records that survive a server restart."""

from __future__ import annotations

import os
import subprocess
import sys
import time
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


# -- in-process: the real app and database, an engine that never generates ------------------------------------
API, ADMIN = {"Authorization": "Bearer k-api"}, {"Authorization": "Bearer k-admin"}


@pytest.fixture()
def app_client(tmp_path: Path, db_url: str, base_info):
    from fastapi.testclient import TestClient

    from loradock.core.settings import Settings
    from loradock.core.store import AdapterStore
    from loradock.core.synthetic import make_synthetic_adapters
    from loradock.serve.app import create_app
    from tests.conftest import BASE_MODEL
    from tests.serve.feedback_server import IdleEngine

    make_synthetic_adapters(AdapterStore(tmp_path / "adapters"), base_info, ["syn-a"])
    settings = Settings(base_model=BASE_MODEL, adapters_dir=tmp_path / "adapters", api_key="k-api",
                        admin_key="k-admin", feedback_per_minute=8, db_url=db_url)
    with FeedbackStore(db_url) as store, TestClient(create_app(settings, engine=IdleEngine(), feedback=store)) as tc:
        deadline = time.monotonic() + 30
        while not tc.app.state.ready and time.monotonic() < deadline:  # the start task scans the store
            time.sleep(0.05)
        yield tc


def _vote(i: int, winner: str = "syn-a", **extra: object) -> dict:
    loser = "SmolLM2-135M-Instruct" if winner == "syn-a" else "syn-a"
    return {**_row(i), "chosen_model": winner, "rejected_model": loser, "blind": True, "prompt_set": "warranty",
            "chosen_approach": "adapter" if winner == "syn-a" else "base",
            "rejected_approach": "base" if winner == "syn-a" else "adapter", "shown_order": ["B?", "A?"], **extra}


def test_feedback_writes_are_rate_limited_per_key(app_client) -> None:
    codes = [app_client.post("/v1/feedback", json=_vote(i), headers=API).status_code for i in range(9)]
    assert codes == [200] * 8 + [429]
    refused = app_client.post("/v1/feedback", json=_vote(9), headers=API)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["type"] == "rate_limit_error" and "a minute" in refused.json()["error"]["message"]
    assert app_client.post("/v1/feedback", json=_vote(10), headers=ADMIN).status_code == 200  # its own bucket


@pytest.mark.parametrize(("change", "param", "message"), [
    ({"chosen": "x" * 16_001}, "chosen", "longer than 16000"),
    ({"meta": {"blob": "x" * 20_000}}, "meta", "larger than 16384"),
    ({"prompt": [{"role": "user", "content": "q"}] * 65}, "prompt", "at most 64"),
])
def test_oversized_records_get_a_400_that_names_the_field(app_client, change: dict, param: str,
                                                         message: str) -> None:
    r = app_client.post("/v1/feedback", json={**_vote(0), **change}, headers=API)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and message in r.json()["error"]["message"]


def test_admin_routes_list_delete_check_and_export(app_client) -> None:
    ids = [app_client.post("/v1/feedback", json=_vote(i), headers=API).json()["id"] for i in range(3)]
    app_client.post("/v1/feedback", json=_vote(0, winner="SmolLM2-135M-Instruct",
                                                chosen=ROW["rejected"], rejected=_row(0)["chosen"]), headers=API)
    for method, path in (("GET", "/v1/feedback"), ("GET", "/v1/feedback/quality"),
                         ("POST", "/v1/feedback/export"), ("DELETE", f"/v1/feedback/{ids[0]}")):
        assert app_client.request(method, path, headers=API, json={}).status_code == 401, path
    listed = app_client.get("/v1/feedback?blind=true&prompt_set=warranty&limit=2", headers=ADMIN).json()
    assert listed["total"] == 4 and len(listed["data"]) == 2 and listed["data"][0]["shown_order"] == ["B?", "A?"]
    quality = app_client.get("/v1/feedback/quality", headers=ADMIN).json()  # one prompt, both winners
    assert quality["flagged"]["contradictory"] == 4 and quality["contradictory_groups"] == 1
    export = app_client.post("/v1/feedback/export", json={}, headers=ADMIN).json()
    assert export["report"]["dropped"]["contradictory"] == 4 and export["data"] == []
    export = app_client.post("/v1/feedback/export", json={"quality": {"drop_contradictory": False}},
                             headers=ADMIN).json()
    assert export["report"]["kept_flagged"]["contradictory"] == 4 and len(export["data"]) == 4
    assert set(export["data"][0]) == {"prompt", "chosen", "rejected"}
    assert app_client.delete(f"/v1/feedback/{ids[0]}", headers=ADMIN).json()["deleted"] is True
    gone = app_client.delete(f"/v1/feedback/{ids[0]}", headers=ADMIN)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "feedback_not_found"


def test_stats_and_leaderboard_take_filters(app_client) -> None:
    for i in range(5):
        app_client.post("/v1/feedback", json=_vote(i, annotator="ana"), headers=API)
    app_client.post("/v1/feedback", json=_vote(9, blind=False, prompt_set=None), headers=API)
    stats = app_client.get("/v1/feedback/stats?blind=true", headers=API).json()
    assert stats["total"] == 5 and stats["per_adapter"]["syn-a"]["win_rate"] == 1.0
    board = app_client.get("/v1/feedback/leaderboard?level=adapter&annotator=ana&prompt_set=warranty",
                           headers=API).json()
    assert [r["name"] for r in board["ratings"]] == ["syn-a", "base"] and board["votes"] == 5
    assert board["pairs"] == [{"a": "base", "b": "syn-a", "votes": 5, "a_wins": 0, "b_wins": 5, "ties": 0,
                               "a_win_rate": 0.0, "lower": 0.0, "upper": pytest.approx(0.4345, abs=1e-3)}]
    bad = app_client.get("/v1/feedback/leaderboard?level=model", headers=API)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "level"


def test_adapter_details_come_from_the_server(app_client) -> None:
    r = app_client.get("/v1/adapters/syn-a", headers=API)
    assert r.status_code == 200, r.text
    detail = r.json()
    assert detail["id"] == "syn-a" and detail["served"] is True and detail["template_ok"] is True
    assert detail["rank"] == 8 and detail["method"] == "synthetic"
    assert detail["version"] == 1 and [v["version"] for v in detail["versions"]] == [1]
    assert not any(str(v).startswith("/") for v in detail["recipe"].values()), "no server paths"
    assert app_client.get("/v1/adapters/syn-a").status_code == 401
    missing = app_client.get("/v1/adapters/nope", headers=API)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "adapter_not_found"
