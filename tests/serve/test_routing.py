"""Routing, hot swap, admission and error shapes against a fake engine (fast; no vLLM)."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from transformers import AutoTokenizer

from loradock.core.settings import Settings
from loradock.core.store import AdapterStore
from loradock.core.synthetic import make_synthetic_adapters
from loradock.serve.app import create_app
from tests.conftest import BASE_MODEL
from tests.serve.fake_engine import FakeEngine


@pytest.fixture(scope="module")
def seeded_store(tmp_path_factory, base_info) -> AdapterStore:
    store = AdapterStore(tmp_path_factory.mktemp("routing") / "adapters")
    make_synthetic_adapters(store, base_info, ["alpha", "beta"])
    return store


@pytest.fixture()
def app_env(seeded_store, tmp_path):
    import shutil

    root = tmp_path / "adapters"
    shutil.copytree(seeded_store.root, root)
    settings = Settings(base_model=BASE_MODEL, adapters_dir=root, store_poll_seconds=0.1, max_num_seqs=2,
                        max_waiting=1, api_key="k", admin_key="a", max_messages=3, retire_idle_s=0)
    engine = FakeEngine(AutoTokenizer.from_pretrained(str(BASE_MODEL)))
    app = create_app(settings, engine=engine)
    with TestClient(app) as tc:
        deadline = time.monotonic() + 5
        while not app.state.ready and time.monotonic() < deadline:
            time.sleep(0.05)
        yield tc, engine, AdapterStore(root), app


H = {"Authorization": "Bearer k"}
ADMIN = {"Authorization": "Bearer a"}


def _chat(tc, model, **kw):
    return tc.post("/v1/chat/completions", headers=H,
                   json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, **kw})


def test_requests_route_to_their_adapter_and_load_just_in_time(app_env):
    tc, engine, _, _ = app_env
    assert engine.resident == {}
    assert _chat(tc, "alpha").json()["choices"][0]["message"]["content"].startswith("[alpha@1]")
    assert _chat(tc, "SmolLM2-135M-Instruct").json()["choices"][0]["message"]["content"].startswith("[base]")
    assert [t.name for t in engine.resident.values()] == ["alpha@1"]  # the engine sees one name per version


def test_republished_adapter_gets_a_new_engine_id(app_env):
    tc, engine, store, app = app_env
    _chat(tc, "alpha")
    old = app.state.registry.entries["alpha"].target.int_id
    manifest = store.read_manifest("alpha")
    store.copy_from(store.path("beta"), manifest, overwrite=True)  # new weights: same content is the same version
    deadline = time.monotonic() + 5
    while app.state.registry.entries.get("alpha", None) is not None and \
            app.state.registry.entries["alpha"].target.int_id == old and time.monotonic() < deadline:
        time.sleep(0.05)
    assert app.state.registry.entries["alpha"].target.int_id != old
    assert old not in engine.resident  # the stale version was unloaded from the engine


def test_load_failure_is_4xx_and_others_keep_working(app_env):
    tc, engine, _, _ = app_env
    engine.fail_loads = True
    r = _chat(tc, "beta")
    assert r.status_code == 400 and r.json()["error"]["code"] == "adapter_load_failed"
    engine.fail_loads = False
    assert _chat(tc, "SmolLM2-135M-Instruct").status_code == 200


def test_admin_load_rejects_paths_outside_the_store(app_env, tmp_path):
    tc, *_ = app_env
    for path in ["../../etc", "/etc", str(tmp_path)]:
        r = tc.post("/v1/load_lora_adapter", headers=ADMIN, json={"lora_name": "evil", "lora_path": path})
        assert r.status_code == 400, (path, r.text)
        assert r.json()["error"]["param"] == "lora_path"
    r = tc.post("/v1/load_lora_adapter", headers=ADMIN, json={"lora_name": "Bad/Name"})
    assert r.status_code == 400 and "invalid adapter name" in r.json()["error"]["message"]


def test_alias_load_by_path_inside_the_store(app_env):
    tc, _, store, _ = app_env
    r = tc.post("/v1/load_lora_adapter", headers=ADMIN,
                json={"lora_name": "alpha-alias", "lora_path": str(store.path("alpha"))})
    assert r.status_code == 200, r.text
    # The alias serves alpha's current version: the same engine entry, not a second copy.
    assert _chat(tc, "alpha-alias").json()["choices"][0]["message"]["content"].startswith("[alpha@1]")


def test_admission_control_answers_429_with_retry_after(app_env):
    import threading

    tc, engine, _, _ = app_env
    engine.delay = 0.2
    results = []
    threads = [threading.Thread(target=lambda: results.append(_chat(tc, "SmolLM2-135M-Instruct", max_tokens=5)))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r.status_code for r in results)
    assert 429 in codes and 200 in codes and set(codes) <= {200, 429}
    rejected = next(r for r in results if r.status_code == 429)
    assert rejected.headers["retry-after"] == "1" and rejected.json()["error"]["type"] == "rate_limit_error"


def test_error_bodies_are_openai_shaped(app_env):
    tc, *_ = app_env
    cases = [
        (tc.post("/v1/chat/completions", headers=H, json={"model": "alpha"}), 400),
        (tc.post("/v1/chat/completions", headers=H, content=b"{not json"), 400),
        (_chat(tc, "alpha", temperature=-1), 400),
        (tc.post("/v1/chat/completions", headers=H, json={"model": "alpha", "messages": [
            {"role": "user", "content": "x"}] * 4}), 400),
        (tc.get("/v1/nothing-here", headers=H), 404),
        (tc.get("/v1/models"), 401),
    ]
    for resp, status in cases:
        assert resp.status_code == status, resp.text
        err = resp.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"]


def test_health_is_503_until_the_engine_is_ready(seeded_store):
    settings = Settings(base_model=BASE_MODEL, adapters_dir=seeded_store.root)

    class SlowStart(FakeEngine):
        async def start(self) -> None:
            import asyncio

            await asyncio.sleep(0.5)

    app = create_app(settings, engine=SlowStart(AutoTokenizer.from_pretrained(str(BASE_MODEL))))
    with TestClient(app) as tc:
        assert tc.get("/health").status_code == 503
        r = _chat(tc, "alpha")
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        time.sleep(0.8)
        assert tc.get("/health").status_code == 200


class _Retriever:
    """Refuses like the real RagStore does, so the HTTP mapping of retrieval's own errors is checked."""

    def retrieve(self, collection: str, query: str, top_k: int):
        from loradock.rag.errors import CollectionNotFound, RagError

        if collection == "missing":
            raise CollectionNotFound("RAG collection 'missing' not found", param="rag.collection",
                                     code="collection_not_found")
        raise RagError("invalid collection name", param="rag.collection", code="invalid_collection")


@pytest.mark.parametrize(("collection", "status", "code"), [("missing", 404, "collection_not_found"),
                                                             ("bad", 400, "invalid_collection")])
def test_retrieval_refusals_map_to_openai_shaped_4xx(seeded_store, tmp_path, collection, status, code):
    settings = Settings(base_model=BASE_MODEL, adapters_dir=seeded_store.root, api_key="k")
    app = create_app(settings, engine=FakeEngine(AutoTokenizer.from_pretrained(str(BASE_MODEL))),
                     retriever=_Retriever())
    with TestClient(app) as tc:
        deadline = time.monotonic() + 5
        while not app.state.ready and time.monotonic() < deadline:
            time.sleep(0.05)
        r = _chat(tc, "SmolLM2-135M-Instruct", rag={"collection": collection})
    assert r.status_code == status
    assert r.json()["error"]["code"] == code and r.json()["error"]["param"] == "rag.collection"
