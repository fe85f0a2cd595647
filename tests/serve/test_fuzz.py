"""schemathesis against the server's own OpenAPI schema: no input produces a 5xx.

The app is the real one (routes, validation, registry, store); the engine is the fake, so the fuzzer can
afford hundreds of cases. scripts/fuzz.py runs the same check against a live vLLM server.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from transformers import AutoTokenizer

from loradock.core.settings import Settings
from loradock.core.store import AdapterStore
from loradock.core.synthetic import make_synthetic_adapters
from loradock.serve.app import create_app
from tests.conftest import BASE_MODEL
from tests.serve.fake_engine import FakeEngine


def _app(tmp_path_factory, base_info):
    from loradock.core.base_model import load_base_info
    from loradock.core.feedback import FeedbackStore

    base_info = base_info or load_base_info(BASE_MODEL)
    root = tmp_path_factory.mktemp("fuzz")
    store = AdapterStore(root / "adapters")
    make_synthetic_adapters(store, base_info, ["fuzz-a"])
    s = Settings(base_model=BASE_MODEL, adapters_dir=store.root, db_url=f"sqlite:///{root / 'db.sqlite'}",
                 max_tokens_cap=16, default_max_tokens=4)
    app = create_app(s, engine=FakeEngine(AutoTokenizer.from_pretrained(str(BASE_MODEL))),
                     feedback=FeedbackStore(s.db_url))
    app.state.registry.scan()
    app.state.ready = True  # no lifespan under the ASGI fuzzer; the fake engine needs no start
    return app


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory):
    return _app(tmp_path_factory, None)


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_app):
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)


def test_no_input_causes_a_server_error(fuzz_schema):
    # Driven by hand: schemathesis' pytest plugin does not support pytest 9 yet.
    operations = [result.ok() for result in fuzz_schema.get_all_operations()]
    assert len(operations) >= 8
    seen: dict[str, set[int]] = {}

    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case):
            response = case.call()
            seen.setdefault(f"{case.method} {case.path}", set()).add(response.status_code)
            assert response.status_code < 500, (case.method, case.path, case.body, response.text[:500])
            if response.status_code >= 400 and "json" in response.headers.get("content-type", ""):
                assert set(response.json()["error"]) == {"message", "type", "param", "code"}

        fuzz()
    # The fuzzer got past validation somewhere: not every answer was a 4xx.
    assert any(code == 200 for codes in seen.values() for code in codes), seen


def test_stateful_link_chains_never_cause_a_server_error(fuzz_schema):
    """schemathesis' stateful phase over the schema's OpenAPI links (serve/openapi.py): list models -> chat with
    one, load/unload it, load it again; store feedback -> delete it."""
    followed: set[str] = set()

    class Chains(fuzz_schema.as_state_machine()):  # type: ignore[misc]
        def step(self, input):
            if input.transition is not None and input.is_applied:
                followed.add(input.transition.id)
            return super().step(input)

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            assert response.status_code < 500, (case.method, case.path, case.body, response.text[:500])

    Chains.run(settings=settings(max_examples=30, stateful_step_count=6, deadline=None, database=None,
                                 derandomize=True, suppress_health_check=list(HealthCheck)))
    # Values really flowed along the links, from the model list into inference and adapter admin.
    assert any("GET /v1/models" in t and "chat/completions" in t for t in followed), followed
    assert any("load_lora_adapter" in t for t in followed), followed
