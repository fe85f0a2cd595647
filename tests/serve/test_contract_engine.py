"""The API-edge contract against the real server (vLLM engine), through the official openai client:
bounds as vLLM's server bounds them, n with greedy sampling, structured outputs (base and adapter), tools,
an engine failure mid-stream, and no slot leak after 100 abandoned streams."""

from __future__ import annotations

import asyncio
import json

import httpx
import jsonschema
import openai
import pytest

from tests.conftest import FAULT_MARKER
from tests.serve.test_api import wait_for

pytestmark = pytest.mark.engine
Q = [{"role": "user", "content": "What is the capital of France?"}]
CITY = {"type": "object", "additionalProperties": False, "required": ["city", "country"],
        "properties": {"city": {"type": "string", "maxLength": 24}, "country": {"type": "string", "maxLength": 24}}}


def _metrics(server) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def _gauges_idle(server) -> bool:
    m = _metrics(server)
    return m["loradock_requests_running"] == 0 and m["loradock_requests_waiting"] == 0


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"seed": 2**63}, "seed"),
    ({"n": 2, "temperature": 0}, "n"),
    ({"n": 2, "temperature": 0, "stream": True}, "n"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"extra_body": {"logit_bias": {"999999": 5}}}, "logit_bias"),
    ({"extra_body": {"stop_token_ids": [10**6]}}, "stop_token_ids"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
     "response_format"),
    ({"tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]}, "tools"),
    ({"extra_body": {"echo": True}}, "echo"),
])
def test_out_of_bounds_is_400_naming_the_field(client, server, kwargs, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=server.base, messages=Q, max_tokens=4, **kwargs)
    body = err.value.body
    assert (body["param"] or "").startswith(param) or param in body["message"], body
    assert _gauges_idle(server)


def test_bounds_vllm_accepts_are_served(client, server):
    r = client.chat.completions.create(model=server.base, messages=Q, max_tokens=4, seed=2**63 - 1, n=2,
                                       temperature=0.8)
    assert len(r.choices) == 2
    r = client.chat.completions.create(model=server.base, messages=Q, max_tokens=4, temperature=0,
                                       extra_body={"top_k": 10**6, "min_p": 0.0, "repetition_penalty": 1.0})
    assert r.choices[0].message.content


def test_logit_bias_and_min_tokens_change_the_answer(client, server):
    tok = client.chat.completions.create(model=server.base, messages=Q, max_tokens=1, temperature=0,
                                         logprobs=True).choices[0].logprobs.content[0].token
    banned = client.chat.completions.create(model=server.base, messages=Q, max_tokens=1, temperature=0,
                                            logprobs=True, logit_bias={_token_id(server, tok): -100})
    assert banned.choices[0].logprobs.content[0].token != tok
    r = client.chat.completions.create(model=server.base, messages=[{"role": "user", "content": "Say hi."}],
                                       max_tokens=40, temperature=0, extra_body={"min_tokens": 30})
    assert r.usage.completion_tokens >= 30


def _token_id(server, token: str) -> str:
    from transformers import AutoTokenizer

    from tests.conftest import BASE_MODEL

    ids = AutoTokenizer.from_pretrained(str(BASE_MODEL)).convert_tokens_to_ids([token])
    return str(ids[0])


@pytest.mark.parametrize("model", ["base", "json-answer"])
def test_json_schema_answers_match_the_schema(client, server, model):
    model = server.base if model == "base" else model
    assert model in [server.base, *server.adapter_names]
    fmt = {"type": "json_schema", "json_schema": {"name": "capital", "schema": CITY, "strict": True}}
    r = client.chat.completions.create(model=model, messages=Q, max_tokens=80, temperature=0, response_format=fmt)
    text = r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop", text
    jsonschema.validate(json.loads(text), CITY)
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=model, messages=Q, max_tokens=80, temperature=0, response_format=fmt, stream=True) if c.choices)
    assert streamed == text


def test_json_object_answer_is_json(client, server):
    # The adapter trained to answer {"answer": ...}; the base model tends to add keys until max_tokens.
    r = client.chat.completions.create(model="json-answer", messages=Q, max_tokens=80, temperature=0,
                                       response_format={"type": "json_object"})
    assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_completions_echo(client, server):
    prompt = "The capital of France is"
    plain = client.completions.create(model=server.base, prompt=prompt, max_tokens=4, temperature=0)
    echoed = client.completions.create(model=server.base, prompt=prompt, max_tokens=4, temperature=0, echo=True)
    assert echoed.choices[0].text == prompt + plain.choices[0].text


def test_engine_failure_mid_stream_is_an_error_event(client, server):
    before = _metrics(server)
    key = f'loradock_requests_total{{endpoint="chat",model="{server.base}",status="error"}}'
    got: list[str] = []
    with pytest.raises(openai.APIError) as err:
        for chunk in client.chat.completions.create(
                model=server.base, messages=[{"role": "user", "content": f"Count to fifty. {FAULT_MARKER}"}],
                max_tokens=64, temperature=0, stream=True, extra_body={"ignore_eos": True}):
            if chunk.choices:
                got.append(chunk.choices[0].delta.content or "")
    assert len(got) == 3 and err.value.body["type"] == "server_error" and err.value.body["code"] == "engine_error"
    assert wait_for(lambda: _gauges_idle(server), timeout=10)
    assert _metrics(server)[key] == before.get(key, 0) + 1
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="syn-a", messages=[{"role": "user", "content": FAULT_MARKER}],
                                       max_tokens=16, extra_body={"ignore_eos": True})
    # The engine is fine and its requests were closed: the next request is served.
    assert "Paris" in client.chat.completions.create(model=server.base, messages=Q, max_tokens=16,
                                                     temperature=0).choices[0].message.content


def test_no_slot_leak_after_100_abandoned_streams(client, server):
    before = _metrics(server)
    aborted = 'loradock_requests_total{endpoint="chat",model="syn-b",status="aborted"}'
    body = {"model": "syn-b", "messages": Q, "max_tokens": 400, "temperature": 0.7, "stream": True,
            "ignore_eos": True}

    async def abandon(http: httpx.AsyncClient, i: int) -> int:
        async with http.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            if i % 2:  # half read a chunk first, half leave as soon as the headers arrive
                async for _ in r.aiter_raw():
                    break
        return i

    async def run() -> None:
        async with httpx.AsyncClient(base_url=server.url, headers=server.headers(), timeout=120,
                                     limits=httpx.Limits(max_connections=100)) as http:
            await asyncio.gather(*[abandon(http, i) for i in range(100)])

    asyncio.run(run())
    assert wait_for(lambda: _gauges_idle(server), timeout=60)
    assert wait_for(lambda: _metrics(server).get(aborted, 0) == before.get(aborted, 0) + 100, timeout=30)
    r = client.chat.completions.create(model="syn-b", messages=Q, max_tokens=4, temperature=0)
    assert r.choices[0].message.content
