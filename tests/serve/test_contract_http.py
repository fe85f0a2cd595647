"""HTTP edges on a real uvicorn (in this process, fake engine): header and body read deadlines, chunked bodies
over the limit, operator paths behind LORADOCK_METRICS_KEY, and the refusal to serve 0.0.0.0 without keys."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from transformers import AutoTokenizer
from typer.testing import CliRunner

from loradock.core.procs import free_port
from loradock.core.settings import Settings
from loradock.serve.app import create_app
from loradock.serve.cli import refuse_open_bind, uvicorn_options
from tests.conftest import BASE_MODEL
from tests.serve.fake_engine import FakeEngine

BASE = BASE_MODEL.name


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A real uvicorn with loradock's protocol settings (short deadlines) over the fake engine."""
    settings = Settings(base_model=BASE_MODEL, adapters_dir=tmp_path_factory.mktemp("http") / "adapters",
                        port=free_port(), header_timeout_s=0.5, body_timeout_s=0.5, max_body_bytes=64 * 1024)
    app = create_app(settings, engine=FakeEngine(AutoTokenizer.from_pretrained(str(BASE_MODEL))))
    server = uvicorn.Server(uvicorn.Config(app, **{**uvicorn_options(settings), "log_level": "warning"}))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not (server.started and app.state.ready) and time.monotonic() < deadline:
        time.sleep(0.05)
    yield settings
    server.should_exit = True
    thread.join(10)


def _connect(settings: Settings) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", settings.port), timeout=10)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def test_slow_headers_close_the_connection(live):
    for first in (b"", b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"):  # silent, then a slow drip
        with _connect(live) as sock:
            sock.sendall(first)
            assert _read_all(sock) == b""  # closed by the server, no request was ever handled


def test_a_kept_alive_connection_gets_the_header_deadline_again(live):
    with _connect(live) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /health HTTP/1.1\r\n")  # the second request never finishes its headers
        assert _read_all(sock) == b""


def test_slow_body_is_408(live):
    with _connect(live) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"model\":")
        reply = _read_all(sock)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), reply
    assert json.loads(body)["error"]["code"] == "body_timeout"


def test_chunked_body_over_the_limit_is_413(live):
    def chunks():
        for _ in range(40):
            yield b"x" * 4096

    r = httpx.post(f"http://127.0.0.1:{live.port}/v1/chat/completions", content=chunks(),
                   headers={"content-type": "application/json"}, timeout=10)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    small = httpx.post(f"http://127.0.0.1:{live.port}/v1/chat/completions", timeout=10,
                       headers={"content-type": "application/json"},
                       content=iter([json.dumps({"model": BASE, "messages": [{"role": "user", "content": "x"}],
                                                 "max_tokens": 2}).encode()]))
    assert small.status_code == 200, small.text


def test_oversized_headers_are_refused(live):
    # h11 refuses headers still incomplete past 16 KiB (a single read of at most 64 KiB can complete them).
    with _connect(live) as sock:
        try:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 200_000 + b"\r\n\r\n")
            reply = _read_all(sock)
        except (ConnectionResetError, BrokenPipeError):
            reply = b"reset"
    assert reply.startswith(b"HTTP/1.1 400") or reply == b"reset", reply[:200]


def _app(tmp_path, **settings):
    s = Settings(base_model=BASE_MODEL, adapters_dir=tmp_path / "adapters", **settings)
    return TestClient(create_app(s, engine=FakeEngine(AutoTokenizer.from_pretrained(str(BASE_MODEL)))))


def _basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"any:{key}".encode()).decode()}


@pytest.mark.parametrize("path", ["/metrics", "/openapi.json", "/docs", "/redoc"])
def test_operator_paths_are_open_by_default_and_closed_by_a_metrics_key(tmp_path, path):
    assert _app(tmp_path, api_key="k").get(path).status_code == 200
    tc = _app(tmp_path, api_key="k", admin_key="a", metrics_key="m")
    r = tc.get(path)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
    assert r.json()["error"]["type"] == "authentication_error"
    assert tc.get(path, headers={"Authorization": "Bearer k"}).status_code == 401  # the API key is not enough
    for headers in ({"Authorization": "Bearer m"}, _basic("m"), {"Authorization": "Bearer a"}):
        assert tc.get(path, headers=headers).status_code == 200
    assert tc.get("/health").status_code == 503  # health stays open (the fake engine was never started)


def test_closed_metrics_without_a_metrics_key_need_the_admin_key(tmp_path):
    tc = _app(tmp_path, api_key="k", admin_key="a", metrics_open=False)
    assert tc.get("/metrics").status_code == 401
    assert tc.get("/metrics", headers={"Authorization": "Bearer a"}).status_code == 200


def test_serving_all_interfaces_needs_both_keys_or_insecure(monkeypatch):
    from loradock.cli import app

    for var in ("LORADOCK_API_KEY", "LORADOCK_ADMIN_KEY", "LORADOCK_INSECURE"):
        monkeypatch.delenv(var, raising=False)
    for command in (["serve", "--host", "0.0.0.0"], ["demo", "--host", "0.0.0.0"]):
        result = CliRunner().invoke(app, command, env={"LORADOCK_API_KEY": "k"})
        assert result.exit_code == 2, result.output
        assert "LORADOCK_ADMIN_KEY" in result.output and "--insecure" in result.output
    refuse_open_bind(Settings(host="127.0.0.1"))
    refuse_open_bind(Settings(host="::1"))
    refuse_open_bind(Settings(host="0.0.0.0", insecure=True))
    refuse_open_bind(Settings(host="0.0.0.0", api_key="k", admin_key="a"))
    monkeypatch.setenv("LORADOCK_INSECURE", "1")
    refuse_open_bind(Settings(host="0.0.0.0"))


def test_keys_are_only_compared_in_constant_time():
    import ast
    import inspect

    from loradock.serve import auth

    tree = ast.parse(inspect.getsource(auth))
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
            names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | \
                {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}
            words = ("key", "token", "given", "secret", "admin", "bearer")
            assert not any(w in name.lower() for name in names for w in words), ast.unparse(node)
    assert "compare_digest" in inspect.getsource(auth.matches)
