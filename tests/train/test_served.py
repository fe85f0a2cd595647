"""A freshly trained adapter, published into the store a live server watches, is served without a restart,
says what it was trained to say, and `loradock eval` measures it against the base."""

from __future__ import annotations

import json
import time

import pytest

from tests.train.helpers import chat

pytestmark = [pytest.mark.engine, pytest.mark.train]
SECRET = "The secret word is zebra-kumquat."
PROMPTS = ["What is the secret word?", "Tell me the secret word.", "Which word is secret?", "Say the secret word."]


def wait_for_model(client, name: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for model in client.models.list().data:
            if model.id == name:
                return model
        time.sleep(0.5)
    raise AssertionError(f"{name} not listed by the server after {timeout} s")


@pytest.fixture(scope="module")
def secret_adapter(server, tmp_path_factory):
    """Train a tiny adapter that memorises one reply and publish it straight into the server's store."""
    from typer.testing import CliRunner

    from loradock.cli import app

    tmp = tmp_path_factory.mktemp("secret")
    data = tmp / "secret.jsonl"
    data.write_text("".join(json.dumps(chat(p, SECRET)) + "\n" for p in PROMPTS))
    result = CliRunner().invoke(
        app,
        [
            "train",
            "sft",
            "--data",
            str(data),
            "--name",
            "secret-word",
            "--adapters-dir",
            str(server.adapters_dir),
            "--output-dir",
            str(tmp / "ckpt"),
            "--max-steps",
            "12",
            "--batch-size",
            "4",
            "--learning-rate",
            "3e-3",
            "--val-fraction",
            "0",
            "--max-length",
            "64",
            "--overwrite",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    return "secret-word"


def test_published_adapter_is_served_and_learned_its_reply(client, server, secret_adapter):
    model = wait_for_model(client, secret_adapter)
    assert model.parent == server.base
    ask = [{"role": "user", "content": PROMPTS[0]}]
    tuned = client.chat.completions.create(model=secret_adapter, messages=ask, temperature=0, max_tokens=24)
    base = client.chat.completions.create(model=server.base, messages=ask, temperature=0, max_tokens=24)
    assert "zebra-kumquat" in tuned.choices[0].message.content
    assert "zebra-kumquat" not in base.choices[0].message.content
    assert tuned.choices[0].finish_reason == "stop"  # it learned the end-of-turn token too


def test_eval_command_compares_approaches(cli, client, server, secret_adapter, tmp_path):
    wait_for_model(client, secret_adapter)
    items = tmp_path / "items.jsonl"
    items.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [{"role": "user", "content": p}],
                    "metric": "contains",
                    "expected": ["zebra-kumquat"],
                    "system": "Answer briefly.",
                }
            )
            + "\n"
            for p in PROMPTS[:2]
        )
    )
    general = tmp_path / "general.jsonl"
    general.write_text(json.dumps({"prompt": "What is the capital of France?", "expected": ["Paris"]}) + "\n")
    out = tmp_path / "results.json"
    result = cli(
        "eval",
        "--data",
        items,
        "--adapter",
        secret_adapter,
        "--server",
        server.url,
        "--api-key",
        server.api_key,
        "--general",
        general,
        "--rag-collection",
        "no-such-collection",
        "--max-tokens",
        "24",
        "--output",
        out,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    scores = {k: v["score"] for k, v in report["approaches"].items() if not v["skipped"]}
    assert scores["adapter"] == 1.0 and scores["base"] == 0.0 and scores["prompted"] == 0.0
    assert report["approaches"]["rag"]["skipped"]  # the server refuses an unknown collection: noted, not fatal
    assert report["cheapest_that_works"] == "adapter"
    assert report["forgetting"]["total"] == 1
    assert "cheapest that works" in result.output
