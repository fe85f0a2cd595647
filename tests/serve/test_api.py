"""Contract tests: a real loradock server over vLLM, driven through the official openai client."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

pytestmark = pytest.mark.engine
Q = [{"role": "user", "content": "What is the capital of France?"}]


def chat(client, model, messages=Q, **kw):
    return client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=24, **kw)


def stream_text(client, model, messages=Q, **kw) -> str:
    parts = []
    for chunk in client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=24,
                                                stream=True, **kw):
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
    return "".join(parts)


def wait_for(predicate, timeout=15.0, interval=0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def test_models_lists_base_and_adapters(client, server):
    models = {m.id: m for m in client.models.list().data}
    base = models[server.base]
    assert base.parent is None
    for name in ("syn-a", "syn-b"):
        m = models[name]
        assert m.parent == server.base
        extra = m.model_extra
        assert extra["rank"] == 8 and len(extra["template_sha256"]) == 64 and "loaded" in extra
        assert m.created > 0


def test_chat_base_and_each_adapter_streamed_equals_non_streamed(client, server):
    answers = {}
    for model in [server.base, *server.adapter_names]:
        resp = chat(client, model)
        text = resp.choices[0].message.content
        assert text and resp.usage.completion_tokens > 0 and resp.model == model
        assert stream_text(client, model) == text
        answers[model] = text
    assert "Paris" in answers[server.base]
    # Adapters change the output (the synthetic ones have random non-zero weights).
    assert len({answers[server.base], answers["syn-a"], answers["syn-b"]}) > 1


def test_unknown_model_is_404_naming_valid_ones(client, server):
    with pytest.raises(openai.NotFoundError) as err:
        chat(client, "no-such-adapter")
    assert "syn-a" in str(err.value) and server.base in str(err.value)


def test_adapter_copied_into_store_is_served_identically(client, server, publish_copy):
    expected = chat(client, "syn-a").choices[0].message.content
    publish_copy("syn-a", "syn-a-copy")
    started = time.monotonic()
    assert wait_for(lambda: "syn-a-copy" in {m.id for m in client.models.list().data}, timeout=10)
    assert time.monotonic() - started < 10
    assert chat(client, "syn-a-copy").choices[0].message.content == expected


def test_unload_and_store_removal_make_the_name_404(client, server, publish_copy):
    from loradock.core.store import AdapterStore

    publish_copy("syn-b", "syn-b-tmp")
    assert chat(client, "syn-b-tmp").choices[0].message.content
    admin = httpx.Client(base_url=server.url, headers=server.headers(admin=True), timeout=60)
    r = admin.post("/v1/unload_lora_adapter", json={"lora_name": "syn-b-tmp"})
    assert r.status_code == 200, r.text
    with pytest.raises(openai.NotFoundError):
        chat(client, "syn-b-tmp")
    models = {m.id: m.model_extra for m in client.models.list().data}
    assert "syn-b-tmp" not in models
    r = admin.post("/v1/load_lora_adapter", json={"lora_name": "syn-b-tmp"})
    assert r.status_code == 200, r.text
    assert {m.id: m.model_extra for m in client.models.list().data}["syn-b-tmp"]["loaded"] is True
    AdapterStore(server.adapters_dir).remove("syn-b-tmp")
    assert wait_for(lambda: "syn-b-tmp" not in {m.id for m in client.models.list().data})
    with pytest.raises(openai.NotFoundError):
        chat(client, "syn-b-tmp")


def test_bad_adapter_refused_while_others_keep_flowing(client, server, publish_copy):
    import json
    import threading

    from loradock.core.store import AdapterStore

    path = publish_copy("syn-a", "broken")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["template_sha256"] = "0" * 64
    (path / "manifest.json").write_text(json.dumps(manifest))
    (path / "adapter_model.safetensors").write_bytes(b"not safetensors")
    results: list[str] = []
    worker = threading.Thread(target=lambda: results.extend(
        chat(client, server.base).choices[0].message.content for _ in range(3)))
    worker.start()
    with pytest.raises(openai.BadRequestError) as err:
        chat(client, "broken")
    assert "refused" in str(err.value)
    admin = httpx.Client(base_url=server.url, headers=server.headers(admin=True), timeout=60)
    r = admin.post("/v1/load_lora_adapter", json={"lora_name": "broken"})
    assert r.status_code == 400 and r.json()["error"]["code"].startswith("adapter_invalid")
    worker.join()
    assert len(results) == 3 and all("Paris" in t for t in results)
    assert "broken" not in {m.id for m in client.models.list().data}
    AdapterStore(server.adapters_dir).remove("broken")


def test_auth(server):
    import openai as oa

    for key in ("wrong", ""):
        bad = oa.OpenAI(base_url=server.v1, api_key=key or "x", max_retries=0)
        with pytest.raises(oa.AuthenticationError):
            bad.models.list()
    r = httpx.get(f"{server.v1}/models")
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    r = httpx.post(f"{server.v1}/load_lora_adapter", json={"lora_name": "syn-a"}, headers=server.headers())
    assert r.status_code == 401  # the API key is not an admin key
    assert httpx.get(f"{server.url}/health").status_code == 200


@pytest.mark.parametrize("kwargs, param", [
    ({"temperature": 5}, "temperature"),
    ({"n": 0}, "n"),
    ({"max_tokens": 100000}, "max_tokens"),
    ({"top_p": 0}, "top_p"),
])
def test_invalid_parameters_are_400(client, server, kwargs, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=server.base, messages=Q, **kwargs)
    body = err.value.body
    assert body["param"] == param or param in body["message"]


def test_context_overflow_names_both_numbers(client, server):
    long = [{"role": "user", "content": "word " * 1900}]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=server.base, messages=long, max_tokens=500)
    msg = str(err.value)
    assert "2048" in msg and "500" in msg and err.value.body["code"] == "context_length_exceeded"


def test_body_too_large_is_413(server):
    r = httpx.post(f"{server.v1}/chat/completions", headers=server.headers(),
                   json={"model": server.base, "messages": [{"role": "user", "content": "x" * 2_000_000}]})
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]


def test_sampling_options_logprobs_n_stop_seed_usage(client, server):
    r = client.chat.completions.create(model="syn-a", messages=Q, max_tokens=8, temperature=0, logprobs=True,
                                       top_logprobs=3)
    lp = r.choices[0].logprobs.content
    assert len(lp) == r.usage.completion_tokens and len(lp[0].top_logprobs) == 3
    r = client.chat.completions.create(model=server.base, messages=Q, max_tokens=8, temperature=1.0, n=2, seed=7)
    assert [c.index for c in r.choices] == [0, 1]
    r2 = client.chat.completions.create(model=server.base, messages=Q, max_tokens=8, temperature=1.0, n=2, seed=7)
    assert [c.message.content for c in r.choices] == [c.message.content for c in r2.choices]
    r = client.chat.completions.create(model=server.base, messages=Q, max_tokens=24, temperature=0, stop=["Paris"])
    assert "Paris" not in r.choices[0].message.content and r.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(model=server.base, messages=Q, max_tokens=5, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens == 5 and chunks[-1].choices == []


def test_text_completions_streamed_and_not(client, server):
    r = client.completions.create(model="syn-b", prompt="The capital of France is", max_tokens=6, temperature=0)
    text = r.choices[0].text
    assert text and r.usage.prompt_tokens > 0
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="syn-b", prompt="The capital of France is", max_tokens=6, temperature=0, stream=True) if c.choices)
    assert streamed == text


def _metric(server, name: str) -> float:
    total = 0.0
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_disconnect_mid_stream_frees_the_engine_slot(client, server):
    stream = client.chat.completions.create(model="syn-a", messages=Q, max_tokens=800, temperature=0,
                                            stream=True, extra_body={"ignore_eos": True})
    for i, _ in enumerate(stream):
        if i == 3:
            break
    assert _metric(server, "loradock_requests_running") >= 1
    stream.response.close()
    assert wait_for(lambda: _metric(server, "loradock_requests_running") == 0, timeout=15)
    assert wait_for(lambda: 'status="aborted"' in httpx.get(f"{server.url}/metrics").text, timeout=5)


def test_metrics_are_labelled_by_adapter(client, server):
    chat(client, "syn-b")
    text = httpx.get(f"{server.url}/metrics").text
    assert 'loradock_requests_total{endpoint="chat",model="syn-b",status="ok"}' in text
    assert 'loradock_generation_tokens_total{model="syn-b"}' in text
    assert "loradock_adapters_resident" in text and "loradock_requests_waiting" in text


def test_lru_eviction_past_max_cpu_loras_spares_pinned(client, server, publish_copy):
    from loradock.core.store import AdapterStore

    admin = httpx.Client(base_url=server.url, headers=server.headers(admin=True), timeout=60)
    publish_copy("syn-a", "pinned-one")
    assert admin.post("/v1/load_lora_adapter", json={"lora_name": "pinned-one", "pin": True}).status_code == 200
    names = [f"evict-{i}" for i in range(9)]  # the fixture's server keeps at most 8 resident
    for name in names:
        publish_copy("syn-b", name)
    for name in names:
        assert client.chat.completions.create(model=name, messages=Q, max_tokens=2, temperature=0).choices
    models = {m.id: m.model_extra for m in client.models.list().data}
    resident = [n for n, extra in models.items() if extra.get("parent") and extra["loaded"]]
    assert len(resident) <= 8, resident
    assert models["pinned-one"]["loaded"] and models["pinned-one"]["pinned"]
    assert not models["evict-0"]["loaded"]  # least recently used
    assert models[names[-1]]["loaded"]
    # An evicted adapter still answers: it is loaded again just in time.
    assert client.chat.completions.create(model="evict-0", messages=Q, max_tokens=2).choices
    store = AdapterStore(server.adapters_dir)
    for name in [*names, "pinned-one"]:
        store.remove(name)
