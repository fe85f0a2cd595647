"""The pieces of `serve --replicas` that need no Ray cluster: routing, merging answers, the in-process ASGI
call, the replica label, and the single-process server staying free of Ray."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from loradock.core.settings import Settings
from loradock.serve.metrics import Metrics
from loradock.serve.replicas import asgi, merge
from loradock.serve.replicas.routing import Router
from tests.conftest import BASE_MODEL, REPO


def test_router_sends_inference_by_adapter_and_admin_everywhere() -> None:
    router = Router(Settings(base_model=BASE_MODEL))
    assert router.kind("POST", "/v1/chat/completions") == router.kind("post", "/v1/completions") == "adapter"
    assert router.kind("GET", "/v1/models") == "models" and router.kind("GET", "/metrics") == "metrics"
    assert router.kind("POST", "/v1/load_lora_adapter") == router.kind("POST", "/v1/unload_lora_adapter") == "broadcast"
    assert router.kind("POST", "/v1/feedback") == router.kind("GET", "/v1/feedback/stats") == "any"
    assert router.kind("POST", "/v1/adapters/pirate/rollback") == "store", "a store change runs once, not per replica"
    assert router.model_id(json.dumps({"model": "pirate", "messages": []}).encode()) == "pirate"
    assert router.model_id(json.dumps({"model": BASE_MODEL.name}).encode()) == ""  # the base: any replica
    assert router.model_id(b"not json") == router.model_id(b"[1]") == router.model_id(b'{"model": 3}') == ""


def _answer(cards: list[dict], status: int = 200) -> asgi.HttpResponse:
    return asgi.HttpResponse(status, [("content-type", "application/json")],
                             json.dumps({"object": "list", "data": cards}).encode())


def test_model_lists_merge_with_residency_per_replica() -> None:
    base, a, b = {"id": "base", "loaded": True}, {"id": "a", "loaded": True}, {"id": "b", "loaded": False}
    merged = merge.models({"r2": _answer([base, {**a, "loaded": False}, b]), "r1": _answer([base, a])})
    cards = {c["id"]: c for c in json.loads(merged.body)["data"]}
    assert merged.header(merge.REPLICAS_HEADER) == "r1,r2"
    assert cards["a"]["loaded"] is True and cards["a"]["loaded_on"] == ["r1"] and cards["a"]["replicas"] == ["r1", "r2"]
    assert cards["b"]["loaded"] is False and cards["b"]["replicas"] == ["r2"]
    failed = merge.models({"r1": _answer([base]), "r2": _answer([], status=503)})
    assert failed.status == 200, "one replica's failure does not hide the others' models"
    assert merge.worst({"r1": _answer([]), "r2": _answer([], status=404)}).status == 404


def test_metrics_carry_the_replica_label_and_merge_into_one_family() -> None:
    texts = {}
    for rid in ("r1", "r2"):
        m = Metrics()
        m.replica = rid
        m.requests.labels("pirate", "chat", "ok").inc()
        texts[rid] = asgi.HttpResponse(200, [], m.render())
    assert b'replica="r1"' in texts["r1"].body
    body = merge.metrics(texts).body.decode()
    samples = [line for line in body.splitlines() if line.startswith("loradock_requests_total{")]
    line = 'loradock_requests_total{{endpoint="chat",model="pirate",replica="{}",status="ok"}} 1.0'
    assert sorted(samples) == [line.format("r1"), line.format("r2")]
    assert body.count("# TYPE loradock_requests_total counter") == 1
    assert b"replica=" not in Metrics().render(), "the single-process server has no replica label"


def test_asgi_call_streams_the_apps_response() -> None:
    app = FastAPI()

    @app.post("/echo")
    async def echo(body: dict) -> StreamingResponse:
        async def parts():
            for word in body["words"]:
                yield f"data: {word}\n\n"

        return StreamingResponse(parts(), media_type="text/event-stream", headers={"x-test": "1"})

    async def run() -> list[object]:
        req = asgi.HttpRequest("POST", "/echo", headers=[("content-type", "application/json")],
                               body=json.dumps({"words": ["a", "b"]}).encode())
        items = [item async for item in asgi.stream(app, req)]
        missing = await asgi.collect(app, asgi.HttpRequest("GET", "/nothing"))
        return [*items, missing]

    start, *chunks, missing = asyncio.run(run())
    assert isinstance(start, asgi.ResponseStart) and start.status == 200 and ("x-test", "1") in start.headers
    assert b"".join(chunks) == b"data: a\n\ndata: b\n\n"
    assert isinstance(missing, asgi.HttpResponse) and missing.status == 404


def test_the_single_process_server_never_imports_ray() -> None:
    code = "import sys, loradock.cli, loradock.serve.app, loradock.serve.cli; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
