"""Engine failures, abandoned streams and admission slots, through the official openai client and raw ASGI
(fake engine, fast). The real-engine side of the same contract is in test_contract_engine.py."""

from __future__ import annotations

import asyncio
import json
import time

import openai
import pytest
from fastapi.testclient import TestClient
from transformers import AutoTokenizer

from loradock.core.settings import Settings
from loradock.serve.app import create_app
from tests.conftest import BASE_MODEL
from tests.serve.fake_engine import FakeEngine

BASE = BASE_MODEL.name
H = {"Authorization": "Bearer k"}


class EngineDeadError(RuntimeError):
    """Named like vLLM's: the engine process died."""


class FlakyEngine(FakeEngine):
    """Fails after ``fail_after`` steps when set; counts generators that are still open."""

    def __init__(self, tokenizer, delay: float = 0.0) -> None:
        super().__init__(tokenizer, delay)
        self.fail_after: int | None = None
        self.failure: type[Exception] = RuntimeError
        self.open = 0
        self.started = 0

    async def generate(self, prompt_ids, params, request_id, lora):
        self.open += 1
        self.started += 1
        try:
            n = 0
            async for step in super().generate(prompt_ids, params, request_id, lora):
                if self.fail_after is not None and n >= self.fail_after:
                    raise self.failure("CUDA error in /opt/secret/worker.py")
                n += 1
                yield step
        finally:
            self.open -= 1


@pytest.fixture()
def env(tmp_path):
    settings = Settings(base_model=BASE_MODEL, adapters_dir=tmp_path / "adapters", api_key="k", admin_key="a",
                        max_num_seqs=4, max_waiting=200)
    engine = FlakyEngine(AutoTokenizer.from_pretrained(str(BASE_MODEL)))
    app = create_app(settings, engine=engine)
    with TestClient(app) as tc:
        deadline = time.monotonic() + 5
        while not app.state.ready and time.monotonic() < deadline:
            time.sleep(0.05)
        yield tc, engine, app


def _requests(status: str, endpoint: str = "chat") -> str:
    return f'loradock_requests_total{{endpoint="{endpoint}",model="{BASE}",status="{status}"}}'


def _metric(tc, line_start: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in tc.get("/metrics").text.splitlines()
               if line.startswith(line_start))


def test_engine_failure_mid_stream_ends_with_an_openai_error_event(env):
    tc, engine, app = env
    engine.fail_after = 2
    client = openai.OpenAI(base_url="http://testserver/v1", api_key="k", http_client=tc, max_retries=0)
    got = []
    with pytest.raises(openai.APIError) as err:
        for chunk in client.chat.completions.create(model=BASE, messages=[{"role": "user", "content": "hi"}],
                                                    max_tokens=8, stream=True):
            got.append(chunk.choices[0].delta.content)
    assert len(got) == 2 and err.value.body["code"] == "engine_error"
    assert "/opt/secret" not in err.value.message
    # The raw stream: the error event has OpenAI's shape and [DONE] follows, as vLLM's server sends it.
    r = tc.post("/v1/chat/completions", headers=H, json={"model": BASE, "messages": [{"role": "user", "content": "x"}],
                                                          "max_tokens": 8, "stream": True})
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])
    assert set(error["error"]) == {"message", "type", "param", "code"} and error["error"]["type"] == "server_error"
    assert _metric(tc, _requests("error")) == 2
    assert app.state.generation.admission.in_flight == 0 and engine.open == 0
    assert _metric(tc, "loradock_requests_running") == 0 and _metric(tc, "loradock_requests_waiting") == 0


def test_engine_failure_without_streaming_is_shaped_and_counted(env):
    tc, engine, app = env
    engine.fail_after = 1
    r = tc.post("/v1/chat/completions", headers=H, json={"model": BASE, "messages": [{"role": "user", "content": "x"}],
                                                          "max_tokens": 4})
    assert r.status_code == 500 and r.json()["error"]["code"] == "engine_error"
    engine.failure = EngineDeadError
    r = tc.post("/v1/completions", headers=H, json={"model": BASE, "prompt": "x", "max_tokens": 4})
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert r.json()["error"]["code"] == "engine_unavailable"
    assert _metric(tc, _requests("error", "completions")) == 1
    assert app.state.generation.admission.in_flight == 0 and engine.open == 0


async def _abandon(app, body: dict, after_chunks: int) -> list[bytes]:
    """One streaming request over raw ASGI whose client goes away after ``after_chunks`` body chunks
    (0: right as the response starts, before the stream is ever iterated)."""
    raw, sent, gone = json.dumps(body).encode(), [], asyncio.Event()
    delivered = False

    async def receive():
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.start":
            assert message["status"] == 200, message
        if message["type"] == "http.response.body" and message.get("body"):
            sent.append(message["body"])
        if len(sent) >= after_chunks:
            gone.set()
            await asyncio.sleep(0)  # let the disconnect land while this send is in progress

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5000), "server": ("testserver", 80),
             "headers": [(b"content-type", b"application/json"), (b"authorization", b"Bearer k")]}
    await app(scope, receive, send)
    return sent


def test_a_hundred_abandoned_streams_leak_no_slot_and_no_engine_request(env):
    tc, engine, app = env
    engine.delay = 0.01
    body = {"model": BASE, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 200, "stream": True}

    async def run() -> list[list[bytes]]:
        return await asyncio.gather(*[_abandon(app, body, after_chunks=i % 4) for i in range(100)])

    outputs = asyncio.run(run())
    assert max(len(o) for o in outputs) >= 3
    assert engine.started < 100  # some streams were abandoned before their body was ever iterated
    assert app.state.generation.admission.in_flight == 0
    assert engine.open == 0  # every engine request that started was closed (the fake records it as aborted)
    assert len(engine.aborted) == engine.started
    assert _metric(tc, "loradock_requests_running") == 0 and _metric(tc, "loradock_requests_waiting") == 0
    assert _metric(tc, _requests("aborted")) == 100  # never iterated or cut short: each counted once
    # The capacity is all there: as many concurrent requests as before are admitted.
    r = tc.post("/v1/chat/completions", headers=H, json={**body, "stream": False, "max_tokens": 2})
    assert r.status_code == 200


def test_refused_request_never_takes_a_slot_or_reaches_the_engine(env):
    tc, engine, app = env
    for extra in ({"n": 2, "temperature": 0, "stream": True}, {"tools": [{"type": "function"}], "stream": True},
                  {"model": "nope", "stream": True}, {"max_tokens": 10**6, "stream": True}):
        r = tc.post("/v1/chat/completions", headers=H,
                    json={"model": BASE, "messages": [{"role": "user", "content": "x"}], **extra})
        assert 400 <= r.status_code < 500 and r.headers["content-type"].startswith("application/json"), r.text
    assert engine.started == 0 and app.state.generation.admission.in_flight == 0
    assert _metric(tc, "loradock_requests_waiting") == 0


def test_parameters_the_engine_refuses_are_400_before_admission_ends(env):
    from loradock.serve.engine import ParamsRejected

    tc, engine, app = env

    def refuse(params):
        if params.structured is not None:
            raise ParamsRejected("Grammar error: Invalid type: nope")
        if params.top_k == 7:
            raise ParamsRejected("top_k must be 0 (disable), or at least 1, got 7.", "top_k")

    engine.check = refuse
    bad_schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}
    for extra, param in (({"response_format": bad_schema}, "response_format"), ({"top_k": 7}, "top_k"),
                         ({"response_format": bad_schema, "stream": True}, "response_format")):
        r = tc.post("/v1/chat/completions", headers=H,
                    json={"model": BASE, "messages": [{"role": "user", "content": "x"}], "max_tokens": 4, **extra})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    assert engine.started == 0 and app.state.generation.admission.in_flight == 0
