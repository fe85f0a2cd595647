"""Hot swap under traffic, against the real engine: immutable versions, drained retirement, total store
validation, an engine that heals. Each test fails on a server without these (see issue #10)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import psutil
import pytest
from safetensors.torch import load_file, save_file

from loradock.core.store import AdapterStore
from tests.conftest import REPO

pytestmark = pytest.mark.engine
Q = [{"role": "user", "content": "What is the capital of France?"}]
# Far past one 128-token KV block, so vLLM's prefix cache shares blocks between requests.
LONG = [{"role": "user", "content": " ".join(f"Note {i}: the harbour opens at dawn and closes at dusk."
                                             for i in range(40)) + " When does the harbour open?"}]


@pytest.fixture(scope="module")
def strong(server, base_info) -> tuple[str, str]:
    """Two adapters far from the base and from each other (the session's syn-a/syn-b open alike on Q), so
    which weights wrote an answer shows in its first words."""
    from loradock.core.synthetic import make_synthetic_adapters

    names = ["strong-a", "strong-b"]
    make_synthetic_adapters(AdapterStore(server.adapters_dir), base_info, names, seed=41, scale=2.0)
    return names[0], names[1]


def greedy(client, model, messages=Q, max_tokens=24) -> str:
    return client.chat.completions.create(model=model, messages=messages, temperature=0,
                                          max_tokens=max_tokens).choices[0].message.content


def wait_for(predicate, timeout=20.0, interval=0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def version(client, name) -> int | None:
    card = {m.id: m for m in client.models.list().data}.get(name)
    return None if card is None else card.model_extra.get("version")


def admin(server) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers=server.headers(admin=True), timeout=120)


def _loaded(server, name: str, number: int) -> bool:
    rows = admin(server).get(f"/v1/adapters/{name}/versions").json()["data"]
    return any(r["version"] == number and r["loaded"] for r in rows)


def test_same_name_republish_answers_like_the_new_weights_even_for_a_cached_prompt(client, server, publish_copy,
                                                                                  strong):
    publish_copy(strong[0], "victim")
    assert wait_for(lambda: version(client, "victim") == 1)
    before = greedy(client, "victim", LONG)  # leaves syn-a's KV blocks for this prompt in the prefix cache
    publish_copy(strong[1], "victim")  # same name, same folder, new weights (atomic rename)
    assert wait_for(lambda: version(client, "victim") == 2)
    assert wait_for(lambda: _loaded(server, "victim", 2)), "the hot swap loads the new version ahead of use"
    after = greedy(client, "victim", LONG)
    assert after == greedy(client, strong[1], LONG)
    assert after != before
    AdapterStore(server.adapters_dir).remove("victim")


def _streams(client, model, n, max_tokens):
    """Start ``n`` greedy streams; returns (threads, texts, finish reasons, errors) once each has a token."""
    texts: list[list[str]] = [[] for _ in range(n)]
    finish: list[str | None] = [None] * n
    started = [threading.Event() for _ in range(n)]
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            for chunk in client.chat.completions.create(model=model, messages=Q, temperature=0, stream=True,
                                                        max_tokens=max_tokens, extra_body={"ignore_eos": True}):
                if chunk.choices and chunk.choices[0].delta.content:
                    texts[i].append(chunk.choices[0].delta.content)
                    started[i].set()
                if chunk.choices and chunk.choices[0].finish_reason:
                    finish[i] = chunk.choices[0].finish_reason
        except BaseException as e:  # reported by the test
            errors.append(e)
            started[i].set()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for e in started:
        assert e.wait(120)
    return threads, texts, finish, errors


def _common_prefix(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def _answers_like(text: str, expected: str, other: str) -> bool:
    """Greedy text from ``expected``'s weights rather than ``other``'s. Batches of different shapes may round
    differently (bfloat16), so an answer is matched by its opening, where the two adapters part at once."""
    return _common_prefix(text, expected) > _common_prefix(text, other)


def test_remove_and_overwrite_while_six_streams_run_drain_on_the_old_version(client, server, publish_copy, strong):
    store = AdapterStore(server.adapters_dir)
    tokens = 96
    a, b = strong
    ref = {src: greedy(client, src, max_tokens=tokens) for src in strong}
    assert _common_prefix(ref[a], ref[b]) < 8  # the two part at once, so an answer's opening says whose it is
    publish_copy(a, "drain")
    assert wait_for(lambda: version(client, "drain") == 1)
    health: list[int] = []
    stop = threading.Event()

    def poll_health() -> None:
        while not stop.is_set():
            health.append(httpx.get(f"{server.url}/health", timeout=30).status_code)
            time.sleep(0.1)

    poller = threading.Thread(target=poll_health, daemon=True)
    poller.start()
    ops = admin(server)
    for step, old, new in (("overwrite", a, b), ("remove", b, a)):
        threads, texts, finish, errors = _streams(client, "drain", 6, tokens)
        if step == "overwrite":
            publish_copy(new, "drain")
            assert wait_for(lambda: version(client, "drain") == 2, interval=0.05)
            rows = {r["version"]: r for r in ops.get("/v1/adapters/drain/versions").json()["data"]}
            assert rows[1]["loaded"] and rows[1]["in_flight"] > 0 and rows[2]["current"], rows  # still serving
            assert _answers_like(greedy(client, "drain", max_tokens=tokens), ref[new], ref[old])
        else:
            store.remove("drain")
            assert wait_for(lambda: "drain" not in {m.id for m in client.models.list().data}, interval=0.05)
            with pytest.raises(openai.NotFoundError):
                greedy(client, "drain")
        for t in threads:
            t.join(120)
        assert not errors, (step, errors)
        assert finish == ["length"] * 6, (step, finish)  # every stream ran to its end
        assert all(_answers_like("".join(t), ref[old], ref[new]) for t in texts), (step, texts)
    stop.set()
    poller.join()
    assert health and set(health) == {200}


def _broken_folders(src, root, outside):
    """Ten and more kinds of folder that must not be served, each with the code it is refused with."""

    def copy(name):
        dst = root / name
        shutil.copytree(src, dst)
        manifest = json.loads((dst / "manifest.json").read_text())
        (dst / "manifest.json").write_text(json.dumps({**manifest, "name": name}))
        return dst

    def config(name, **changes):
        dst = copy(name)
        data = json.loads((dst / "adapter_config.json").read_text())
        (dst / "adapter_config.json").write_text(json.dumps({**data, **changes}))

    config("r-abc", r="abc")
    config("rank-list", rank_pattern=["q_proj", 4])
    config("targets-unhashable", target_modules=[["q_proj"]])
    config("targets-regex", target_modules="(a+)+$")
    (copy("deep-json") / "adapter_config.json").write_text("[" * 100_000 + "]" * 100_000)
    fifo = copy("fifo-manifest") / "manifest.json"
    fifo.unlink()
    os.mkfifo(fifo)
    (copy("no-manifest") / "manifest.json").unlink()
    (copy("no-weights") / "adapter_model.safetensors").unlink()
    (copy("bad-weights") / "adapter_model.safetensors").write_bytes(b"not safetensors at all")
    weights_path = copy("wrong-shape") / "adapter_model.safetensors"
    weights = load_file(weights_path)
    key = next(k for k in weights if k.endswith("q_proj.lora_A.weight"))
    weights[key] = weights[key].T.contiguous()
    save_file(weights, weights_path)
    shutil.copytree(root / "r-abc", root / "Bad_Name!")
    shutil.copytree(src, outside / "elsewhere")
    (root / "link-out").symlink_to(outside / "elsewhere")
    return {"r-abc": "bad_config", "rank-list": "bad_config", "targets-unhashable": "bad_config",
            "targets-regex": "unknown_target_modules", "deep-json": "bad_json", "fifo-manifest": "not_regular_file",
            "no-manifest": "missing_file", "no-weights": "missing_file", "bad-weights": "corrupt_weights",
            "wrong-shape": "shape_mismatch", "Bad_Name!": "bad_name", "link-out": "symlink"}


def test_broken_folders_are_refused_with_their_code_and_the_store_keeps_serving(client, server, tmp_path):
    store = AdapterStore(server.adapters_dir)
    staging, outside = tmp_path / "staging", tmp_path / "outside"
    staging.mkdir()
    outside.mkdir()
    expected = _broken_folders(store.path("syn-a"), staging, outside)
    for name in expected:
        os.rename(staging / name, store.root / name)  # dropped in, each at once
    ops = admin(server)

    def refused() -> dict[str, str]:
        r = ops.get("/v1/adapters")
        assert r.status_code == 200, r.text
        return {row["entry"]: row["code"] for row in r.json()["invalid"]}

    try:
        assert wait_for(lambda: all(refused().get(n) == c for n, c in expected.items()), timeout=30), refused()
        served = {m.id for m in client.models.list().data}
        assert not served & set(expected) and {"syn-a", "syn-b"} <= served
        r = ops.post("/v1/load_lora_adapter", json={"lora_name": "no-manifest"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "adapter_invalid:missing_file", r.text
        shutil.copytree(store.path("syn-b"), staging / "late-good")
        manifest = json.loads((staging / "late-good" / "manifest.json").read_text())
        (staging / "late-good" / "manifest.json").write_text(json.dumps({**manifest, "name": "late-good"}))
        os.rename(staging / "late-good", store.root / "late-good")
        # Within a few poll intervals (0.5 s here), and without a /v1/models call to trigger a scan.
        assert wait_for(lambda: any(row["id"] == "late-good" for row in ops.get("/v1/adapters").json()["data"]),
                        timeout=10)
        assert greedy(client, "late-good") == greedy(client, "syn-b")
    finally:
        for name in [*expected, "late-good"]:
            path = store.root / name
            if path.is_symlink() or not path.is_dir():
                path.unlink(missing_ok=True)
            else:
                shutil.rmtree(path)


def test_rollback_and_pinned_versions_through_the_openai_client(client, server, publish_copy, strong):
    publish_copy(strong[0], "pinver")
    assert wait_for(lambda: version(client, "pinver") == 1)
    publish_copy(strong[1], "pinver")
    assert wait_for(lambda: version(client, "pinver") == 2)
    a, b = greedy(client, strong[0]), greedy(client, strong[1])
    assert a != b
    assert (greedy(client, "pinver@1"), greedy(client, "pinver@2"), greedy(client, "pinver")) == (a, b, b)
    card = {m.id: m.model_extra for m in client.models.list().data}["pinver"]
    assert card["version"] == 2 and len(card["content_sha256"]) == 64
    with pytest.raises(openai.NotFoundError, match="not kept"):
        greedy(client, "pinver@9")
    r = admin(server).post("/v1/adapters/pinver/rollback", json={})
    assert r.status_code == 200 and r.json()["version"] == 1, r.text
    assert version(client, "pinver") == 1 and greedy(client, "pinver") == a
    history = admin(server).get("/v1/adapters/pinver/versions").json()["data"]
    assert [(h["version"], h["current"]) for h in history] == [(2, False), (1, True)]
    out = subprocess.run([sys.executable, "-m", "loradock", "adapters", "rollback", "pinver", "--to", "2",
                          "--adapters-dir", str(server.adapters_dir)], cwd=REPO, env=server.env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert wait_for(lambda: version(client, "pinver") == 2)
    assert greedy(client, "pinver") == b
    AdapterStore(server.adapters_dir).remove("pinver")


def _engine_core(server) -> psutil.Process:
    cores = [p for p in psutil.Process(server.proc.pid).children(recursive=True)
             if p.name().startswith("VLLM::EngineCore")]
    assert len(cores) == 1, cores
    return cores[0]


def _engine_env(server) -> dict[str, str]:
    # read /proc directly: vLLM's setproctitle leaves empty entries first, where psutil's environ() stops
    raw = Path(f"/proc/{_engine_core(server).pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode().split("=", 1) for e in raw if b"=" in e)


def test_the_engine_process_keeps_a_bounded_onednn_primitive_cache(server):
    # oneDNN's default (1024 primitives) grows the engine ~300 MB under varied batch shapes (docs/operations.md)
    assert _engine_env(server)["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "64"


def test_a_killed_engine_core_ends_requests_cleanly_and_the_server_heals_itself(client, server):
    stream = client.chat.completions.create(model="syn-a", messages=Q, temperature=0, max_tokens=600, stream=True,
                                            extra_body={"ignore_eos": True})
    chunks = iter(stream)
    next(chunks)
    _engine_core(server).send_signal(signal.SIGKILL)
    with pytest.raises(openai.APIError) as err:  # the stream ends with an SSE error event, not a cut connection
        for _ in chunks:
            pass
    assert "engine" in str(err.value)
    assert wait_for(lambda: httpx.get(f"{server.url}/health").status_code == 503, timeout=10)
    with pytest.raises(openai.InternalServerError) as down:
        greedy(client, server.base)
    assert down.value.status_code == 503 and down.value.response.headers["retry-after"]
    assert wait_for(lambda: httpx.get(f"{server.url}/health").status_code == 200, timeout=240, interval=1)
    assert "Paris" in greedy(client, server.base)
    assert greedy(client, "syn-a")
    assert _engine_env(server)["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "64"  # the restarted one too
    metrics = httpx.get(f"{server.url}/metrics").text
    assert "loradock_engine_restarts_total 1.0" in metrics


def test_an_engine_that_cannot_start_makes_the_server_exit_with_the_reason(server, tmp_path):
    from loradock.core.procs import free_port, start_logged

    env = {**server.env, "LORADOCK_MAX_MODEL_LEN": "1000000", "LORADOCK_ADAPTERS_DIR": str(tmp_path / "store")}
    log = tmp_path / "server.log"
    proc = start_logged([sys.executable, "-m", "loradock", "serve", "--port", str(free_port())], log, env=env,
                        cwd=REPO)
    try:
        code = proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert code == 1, text[-3000:]
    assert "max_model_len" in text and "exits" in text
