"""Drained retirement and engine supervision, step by step, against the fake engine (fast, deterministic)."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from transformers import AutoTokenizer

from loradock.core.settings import Settings
from loradock.core.store import AdapterStore
from loradock.core.synthetic import make_synthetic_adapters
from loradock.serve.app import create_app
from loradock.serve.engine import EngineUnavailable
from tests.conftest import BASE_MODEL
from tests.serve.fake_engine import FakeEngine

H = {"Authorization": "Bearer k"}


class MortalEngine(FakeEngine):
    """A fake engine whose core can die, and whose restarts can be made to fail."""

    def __init__(self, tokenizer, delay: float = 0.0) -> None:
        super().__init__(tokenizer, delay)
        self.dead, self.starts, self.failing_starts = False, 0, 0

    async def start(self) -> None:
        self.starts += 1
        if self.failing_starts:
            self.failing_starts -= 1
            raise RuntimeError("simulated start failure")
        self.dead = False
        self.resident.clear()

    async def generate(self, prompt_ids, params, request_id, lora):
        async for step in super().generate(prompt_ids, params, request_id, lora):
            if self.dead:
                raise EngineUnavailable("the engine core died")
            yield step

    async def check_health(self) -> None:
        if self.dead:
            raise EngineUnavailable("the engine core died")


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, base_info) -> AdapterStore:
    store = AdapterStore(tmp_path_factory.mktemp("lifecycle") / "adapters")
    make_synthetic_adapters(store, base_info, ["alpha", "beta"])
    return store


@pytest.fixture()
def served(seeded, tmp_path):
    root = tmp_path / "adapters"
    shutil.copytree(seeded.root, root)
    settings = Settings(base_model=BASE_MODEL, adapters_dir=root, store_poll_seconds=0.1, api_key="k",
                        admin_key="a", engine_max_restarts=1, retire_idle_s=0.2)
    engine = MortalEngine(AutoTokenizer.from_pretrained(str(BASE_MODEL)), delay=0.02)
    app = create_app(settings, engine=engine)
    with TestClient(app) as tc:
        assert _until(lambda: app.state.ready)
        yield tc, engine, AdapterStore(root), app


def _until(predicate, timeout=10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def _chat(tc, model, max_tokens=3):
    return tc.post("/v1/chat/completions", headers=H, json={"model": model, "max_tokens": max_tokens,
                                                             "messages": [{"role": "user", "content": "hi"}]})


def _streams(tc, model, n, max_tokens):
    texts: list[str] = [""] * n

    def run(i):
        with tc.stream("POST", "/v1/chat/completions", headers=H, json={
                "model": model, "max_tokens": max_tokens, "stream": True,
                "messages": [{"role": "user", "content": "hi"}]}) as r:
            texts[i] = r.read().decode()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    return threads, texts


def _in_flight(app, name, version):
    rows = {r["version"]: r for r in app.state.registry.history(name)}
    return rows.get(version, {}).get("in_flight", 0)


@pytest.mark.parametrize("change", ["republish", "remove"])
def test_a_replaced_or_removed_version_leaves_the_engine_after_its_last_request(served, change):
    tc, engine, store, app = served
    threads, texts = _streams(tc, "alpha", 3, 60)
    assert _until(lambda: _in_flight(app, "alpha", 1) == 3)
    old_id = app.state.registry.entries["alpha"].target.int_id
    assert Path(engine.resident[old_id].path).parent.parent.name == ".versions"  # the engine reads the snapshot
    if change == "republish":
        store.copy_from(store.path("beta"), store.read_manifest("alpha"), overwrite=True)
        assert _until(lambda: app.state.registry.entries["alpha"].version == 2)
        assert _chat(tc, "alpha").json()["choices"][0]["message"]["content"].startswith("[alpha@2]")
    else:
        store.remove("alpha")
        assert _until(lambda: "alpha" not in app.state.registry.names())
        assert _chat(tc, "alpha").status_code == 404
    assert old_id in engine.resident  # still serving the streams that started on it
    for t in threads:
        t.join(30)
    assert all(t.count("[alpha@1]") == 1 and t.count(" w") == 59 and t.endswith("[DONE]\n\n") for t in texts)
    assert _until(lambda: old_id not in engine.resident)


def test_a_republished_version_is_loaded_before_its_first_request(served):
    tc, engine, store, app = served
    assert _chat(tc, "alpha").status_code == 200  # v1 is in the engine
    store.copy_from(store.path("beta"), store.read_manifest("alpha"), overwrite=True)
    assert _until(lambda: app.state.registry.entries["alpha"].version == 2)
    new_id = app.state.registry.entries["alpha"].target.int_id
    assert _until(lambda: new_id in engine.resident), "the hot swap loads the new version ahead"
    assert not any(t.name.startswith("beta") for t in engine.resident.values()), "only replacements are warmed"
    assert _chat(tc, "alpha").json()["choices"][0]["message"]["content"].startswith("[alpha@2]")


def test_pinned_versions_and_rollback_over_http(served):
    tc, _, store, app = served
    store.copy_from(store.path("beta"), store.read_manifest("alpha"), overwrite=True)
    assert _until(lambda: app.state.registry.entries["alpha"].version == 2)
    answer = _chat(tc, "alpha@1").json()["choices"][0]["message"]["content"]
    assert answer.startswith("[alpha@1]")
    assert _chat(tc, "alpha@3").status_code == 404 and _chat(tc, "alpha@x").status_code == 404
    r = tc.post("/v1/adapters/alpha/rollback", headers={"Authorization": "Bearer a"}, json={"to": 1})
    assert r.status_code == 200 and r.json()["version"] == 1
    assert _chat(tc, "alpha").json()["choices"][0]["message"]["content"].startswith("[alpha@1]")
    assert tc.post("/v1/adapters/alpha/rollback", headers=H, json={}).status_code == 401  # admin only
    r = tc.post("/v1/adapters/alpha/rollback", headers={"Authorization": "Bearer a"}, json={"to": 9})
    assert r.status_code == 404 and "not kept" in r.json()["error"]["message"]


def test_the_engine_is_restarted_after_its_core_dies_and_repeated_deaths_are_fatal(served):
    tc, engine, _, app = served
    assert _chat(tc, "alpha").status_code == 200
    engine.dead = True
    r = _chat(tc, "alpha")
    assert r.status_code == 503 and r.headers["retry-after"] and r.json()["error"]["code"] == "engine_unavailable"
    assert _until(lambda: tc.get("/health").status_code == 200)
    assert engine.starts == 2 and "loradock_engine_restarts_total 1.0" in tc.get("/metrics").text
    assert _chat(tc, "alpha").json()["choices"][0]["message"]["content"].startswith("[alpha@1]")
    engine.dead, engine.failing_starts = True, 5  # dies again, and would not come back
    assert _chat(tc, "beta").status_code == 503
    assert _until(lambda: app.state.exit_reason is not None)
    assert "giving up" in app.state.exit_reason
    health = tc.get("/health")
    assert health.status_code == 503 and health.json()["status"] == "failed"
