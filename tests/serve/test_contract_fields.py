"""Every OpenAI field honoured, accepted as harmless, or refused with a 400 naming it (fake engine, fast).

The same decisions against the real engine are in test_contract_engine.py; docs/api.md has the table.
"""

from __future__ import annotations

import json
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

BASE = BASE_MODEL.name
H = {"Authorization": "Bearer k"}
ADMIN = {"Authorization": "Bearer a"}
MSG = [{"role": "user", "content": "hi"}]


class RecordingEngine(FakeEngine):
    """Keeps the last GenParams the engine was asked to run."""

    def __init__(self, tokenizer) -> None:
        super().__init__(tokenizer)
        self.last = None

    async def generate(self, prompt_ids, params, request_id, lora):
        self.last = params
        self.last_prompt = prompt_ids
        async for step in super().generate(prompt_ids, params, request_id, lora):
            yield step


@pytest.fixture(scope="module")
def seeded_settings(tmp_path_factory, base_info) -> Settings:
    store = AdapterStore(tmp_path_factory.mktemp("fields") / "adapters")
    make_synthetic_adapters(store, base_info, ["alpha"])
    return Settings(base_model=BASE_MODEL, adapters_dir=store.root, api_key="k", admin_key="a")


@pytest.fixture(scope="module")
def env(seeded_settings):
    settings = seeded_settings
    engine = RecordingEngine(AutoTokenizer.from_pretrained(str(BASE_MODEL)))
    app = create_app(settings, engine=engine)
    with TestClient(app) as tc:
        deadline = time.monotonic() + 5
        while not app.state.ready and time.monotonic() < deadline:
            time.sleep(0.05)
        yield tc, engine, app


def chat(tc, headers=H, **fields):
    body = {"model": BASE, "messages": MSG, "max_tokens": 3, **fields}
    return tc.post("/v1/chat/completions", headers=headers, json=body)


def refused(resp, param: str, *words: str) -> dict:
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["param"].startswith(param) and err["type"] == "invalid_request_error", err
    for word in words:
        assert word in err["message"], err
    return err


@pytest.mark.parametrize(("fields", "param", "words"), [
    ({"seed": 2**63}, "seed", ()),
    ({"seed": -(2**63) - 1}, "seed", ()),
    ({"n": 2, "temperature": 0}, "n", ("temperature",)),
    ({"n": 2, "temperature": 0, "stream": True}, "n", ("temperature",)),
    ({"n": 9}, "n", ("limit",)),
    ({"stream_options": {"include_usage": True}}, "stream_options", ("stream",)),
    ({"stream": True, "stream_options": {"continuous_usage_stats": True}}, "stream_options.continuous_usage_stats", ()),
    ({"top_logprobs": 3}, "top_logprobs", ("logprobs",)),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", ()),
    ({"logit_bias": {"12": 101}}, "logit_bias", ("[-100, 100]",)),
    ({"logit_bias": {"abc": 1}}, "logit_bias", ("token ids",)),
    ({"logit_bias": {"999999": 1}}, "logit_bias", ("vocabulary",)),
    ({"stop_token_ids": [999999]}, "stop_token_ids", ("vocabulary",)),
    ({"min_tokens": 5}, "min_tokens", ("max_tokens",)),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", ("4",)),
    ({"repetition_penalty": 0}, "repetition_penalty", ()),
    ({"top_k": -2}, "top_k", ()),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools", ("tool-call",)),
    ({"tool_choice": "auto"}, "tool_choice", ("tool-call",)),
    ({"functions": [{"name": "f"}]}, "functions", ("tool-call",)),
    ({"response_format": {"type": "json_schema"}}, "response_format", ("json_schema",)),
    ({"response_format": {"type": "regex"}}, "response_format.type", ()),
    ({"store": True}, "store", ("store",)),
    ({"modalities": ["text", "audio"]}, "modalities", ("text only",)),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio", ("text only",)),
    ({"reasoning_effort": "low"}, "reasoning_effort", ("reasoning",)),
    ({"echo": True}, "echo", ("chat",)),
    ({"use_beam_search": True}, "use_beam_search", ()),
    ({"chat_template": "{{ messages }}"}, "chat_template", ("one chat template",)),
    ({"frobnicate": 1}, "frobnicate", ("unrecognized",)),
    ({"messages": [{"role": "user", "content": "hi", "name": "ana"}]}, "messages.0.name", ("name",)),
    ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, "messages.0.role", ()),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages.0.content", ()),
])
def test_refused_fields_name_the_field(env, fields, param, words):
    tc, *_ = env
    err = refused(chat(tc, **fields), param, *words)
    assert err["message"].split(":")[0]  # says what, not just "invalid"


@pytest.mark.parametrize("fields", [
    {"user": "u-1", "metadata": {"k": "v"}, "service_tier": "auto", "store": False, "parallel_tool_calls": True},
    {"tool_choice": "none", "tools": None, "functions": None, "audio": None, "reasoning_effort": None},
    {"prediction": {"type": "content", "content": "hi"}, "modalities": ["text"], "prompt_cache_key": "x",
     "safety_identifier": "s"},
    {"stream": True, "stream_options": {"include_usage": True, "include_obfuscation": False}},
    {"seed": 2**63 - 1, "temperature": 0.7, "n": 2},
    {"temperature": None, "top_p": None, "n": None, "presence_penalty": None, "frequency_penalty": None,
     "logprobs": None, "top_logprobs": None, "stop": None, "stream": None},
])
def test_harmless_fields_are_accepted(env, fields):
    tc, *_ = env
    r = chat(tc, **fields)
    assert r.status_code == 200, r.text


def test_honoured_fields_reach_the_engine(env):
    tc, engine, _ = env
    r = chat(tc, top_k=5, min_p=0.1, repetition_penalty=1.2, min_tokens=2, stop_token_ids=[2],
             logit_bias={"12": -100}, include_stop_str_in_output=True, skip_special_tokens=False,
             presence_penalty=0.5, frequency_penalty=-0.5, seed=7, temperature=0.3, top_p=0.9, stop="x",
             response_format={"type": "json_schema",
                              "json_schema": {"name": "a", "schema": {"type": "object"}, "strict": True}})
    assert r.status_code == 200, r.text
    p = engine.last
    assert (p.top_k, p.min_p, p.repetition_penalty, p.min_tokens, p.stop_token_ids) == (5, 0.1, 1.2, 2, [2])
    assert p.logit_bias == {12: -100} and p.include_stop_str_in_output and not p.skip_special_tokens
    assert (p.presence_penalty, p.frequency_penalty, p.seed, p.temperature, p.top_p) == (0.5, -0.5, 7, 0.3, 0.9)
    assert p.stop == ["x"] and p.structured == {"json": {"type": "object"}}
    assert chat(tc, response_format={"type": "json_object"}).status_code == 200
    assert engine.last.structured == {"json_object": True}
    assert chat(tc, response_format={"type": "text"}).status_code == 200 and engine.last.structured is None
    assert chat(tc, top_k=10**9).status_code == 200 and engine.last.top_k == 0  # above the vocabulary: off


def test_developer_role_is_rendered_as_system(env):
    tc, engine, _ = env
    from loradock.core.template import encode

    msgs = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert chat(tc, messages=msgs).status_code == 200
    expected = encode(engine.tokenizer, [{"role": "system", "content": "Be brief."}, MSG[0]],
                      add_generation_prompt=True)
    assert engine.last_prompt == expected


def test_completions_echo_and_refusals(env):
    tc, *_ = env

    def comp(**fields):
        return tc.post("/v1/completions", headers=H, json={"model": BASE, "prompt": "Once", "max_tokens": 2,
                                                            **fields})
    r = comp(echo=True)
    assert r.status_code == 200 and r.json()["choices"][0]["text"].startswith("Once[base]")
    lines = [json.loads(line[6:]) for line in comp(echo=True, stream=True).text.splitlines()
             if line.startswith("data: {")]
    assert "".join(c["choices"][0]["text"] for c in lines) == r.json()["choices"][0]["text"]
    r = comp(echo=True, logprobs=1)
    assert r.status_code == 400 and "echo" in r.json()["error"]["message"]
    refused(comp(suffix="end"), "suffix", "fill-in-the-middle")
    refused(comp(best_of=2), "best_of")
    assert comp(suffix=None, best_of=None).status_code == 200


def test_non_finite_numbers_are_400(env):
    tc, *_ = env
    for raw in (b'{"model": "%s", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
                b'{"model": "%s", "messages": [{"role": "user", "content": "x"}], "repetition_penalty": Infinity}'):
        r = tc.post("/v1/chat/completions", headers={**H, "content-type": "application/json"},
                    content=raw % BASE.encode())
        assert r.status_code == 400, r.text


def test_model_root_and_error_paths_are_for_admins_only(env, tmp_path, seeded_settings):
    tc, *_ = env
    cards = tc.get("/v1/models", headers=H).json()["data"]
    assert all(c["root"] is None for c in cards)
    roots = [c["root"] for c in tc.get("/v1/models", headers=ADMIN).json()["data"]]
    assert all(r and r.startswith("/") for r in roots)

    class LeakyRetriever:
        def retrieve(self, collection: str, query: str, top_k: int):
            from loradock.rag.errors import RagError

            raise RagError(f"index {tmp_path}/rag/{collection}/index.faiss is unreadable", param="rag.collection",
                           code="bad_index")

    app = create_app(seeded_settings, engine=FakeEngine(AutoTokenizer.from_pretrained(str(BASE_MODEL))),
                     retriever=LeakyRetriever())
    with TestClient(app) as leaky:
        while not app.state.ready:
            time.sleep(0.05)
        for headers, shows_path in ((H, False), (ADMIN, True)):
            r = chat(leaky, headers=headers, rag={"collection": "faq"})
            message = r.json()["error"]["message"]
            assert r.status_code == 400 and (str(tmp_path) in message) is shows_path, message
            assert "index.faiss is unreadable" in message


def test_unknown_model_lists_at_most_twenty(env):
    tc, _, app = env
    r = chat(tc, model="nope")
    assert r.status_code == 404 and "alpha" in r.json()["error"]["message"]
    names = [f"m{i}" for i in range(30)]
    registry = app.state.registry
    saved = registry.names
    registry.names = lambda: names  # type: ignore[method-assign]
    try:
        msg = chat(tc, model="nope").json()["error"]["message"]
    finally:
        registry.names = saved  # type: ignore[method-assign]
    assert "m18" in msg and "m19" not in msg and "11 more" in msg
