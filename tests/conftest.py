"""Shared fixtures. One real loradock server (vLLM engine) per test session, started on first use."""

from __future__ import annotations

import fcntl
import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from loradock.core.procs import NotHealthy, free_port, log_tail, start_logged, stop, wait_healthy

REPO = Path(__file__).resolve().parents[1]
BASE_MODEL = REPO / "models" / "SmolLM2-135M-Instruct"
ENGINE_LOCK = os.environ.get("LORADOCK_ENGINE_LOCK", "/tmp/loradock-engine.lock")  # one engine at a time
SYNTHETIC = ["syn-a", "syn-b"]
FAULT_MARKER = "<<loradock-test-fault>>"  # a prompt with this text fails mid-generation (serve/faults.py)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@dataclass
class Server:
    url: str
    adapters_dir: Path
    rag_dir: Path
    db_url: str
    api_key: str
    admin_key: str
    base: str
    log: Path
    proc: subprocess.Popen
    adapter_names: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"

    def headers(self, admin: bool = False) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key if admin else self.api_key}"}


@pytest.fixture(scope="session")
def base_info():
    from loradock.core.base_model import load_base_info

    return load_base_info(BASE_MODEL)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, base_info) -> Server:
    """A real `loradock serve` subprocess over vLLM, with a temporary store holding synthetic adapters
    plus every valid adapter shipped in adapters/."""
    from loradock.core.store import AdapterStore
    from loradock.core.synthetic import make_synthetic_adapters
    from loradock.core.validate import validate_adapter

    root = tmp_path_factory.mktemp("server")
    store = AdapterStore(root / "adapters")
    make_synthetic_adapters(store, base_info, SYNTHETIC)
    shipped = AdapterStore(REPO / "adapters")
    for name in shipped.names():
        try:
            manifest = validate_adapter(shipped.path(name), base_info)
        except ValueError:
            continue
        store.copy_from(shipped.path(name), manifest)
    port = free_port()
    env = {**os.environ, "LORADOCK_API_KEY": "test-key", "LORADOCK_ADMIN_KEY": "admin-key",
           "LORADOCK_ADAPTERS_DIR": str(store.root), "LORADOCK_RAG_DIR": str(root / "rag"),
           "LORADOCK_DB_URL": f"sqlite:///{root / 'loradock.db'}", "LORADOCK_STORE_POLL_SECONDS": "0.5",
           "LORADOCK_MAX_CPU_LORAS": "8", "LORADOCK_MAX_LORAS": "4", "LORADOCK_TEST_FAULT_MARKER": FAULT_MARKER}
    log = root / "server.log"
    lock = open(ENGINE_LOCK, "w")  # noqa: SIM115 - held for the whole session
    deadline = time.monotonic() + 600
    while True:  # one engine at a time on this machine; give up waiting after 10 minutes
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                break
            time.sleep(2)
    proc = start_logged([sys.executable, "-m", "loradock", "serve", "--port", str(port)], log, env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    srv = Server(url=url, adapters_dir=store.root, rag_dir=root / "rag", db_url=env["LORADOCK_DB_URL"],
                 api_key="test-key", admin_key="admin-key", base=BASE_MODEL.name, log=log, proc=proc,
                 adapter_names=store.names(), env=env)
    try:
        wait_healthy(url, proc, timeout=300)
    except NotHealthy as e:
        proc.kill()
        raise NotHealthy(f"{e}; server log:\n{log_tail(log, 5000)}") from e
    yield srv
    stop(proc)
    lock.close()


@pytest.fixture(scope="session")
def client(server: Server):
    import openai

    return openai.OpenAI(base_url=server.v1, api_key=server.api_key, max_retries=0, timeout=120)


@pytest.fixture()
def fresh_store(tmp_path: Path):
    from loradock.core.store import AdapterStore

    return AdapterStore(tmp_path / "store")


@pytest.fixture()
def publish_copy(server: Server):
    """Publish a copy of an adapter under a new name into the server's store (atomic rename)."""
    from loradock.core.store import AdapterStore

    store = AdapterStore(server.adapters_dir)

    def _copy(src: str, dst: str) -> Path:
        manifest = store.read_manifest(src).model_copy(update={"name": dst})
        return store.copy_from(store.path(src), manifest, overwrite=True)

    return _copy


# -- PostgreSQL: a real second database for every preference/feedback test ---------------------------------
PG_MISSING = ("PostgreSQL is not installed (no pg_ctl on PATH or in /usr/lib/postgresql/*/bin): "
              "`make postgres` installs Debian's postgresql; the PostgreSQL runs of the database tests are skipped")


def _pg_bindir() -> Path | None:
    found = shutil.which("pg_ctl")
    candidates = [found] if found else sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    return Path(candidates[0]).resolve().parent if candidates else None


@dataclass
class Postgres:
    """A PostgreSQL server of this test session on 127.0.0.1, superuser ``loradock``, trust auth."""

    port: int
    root: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://loradock@127.0.0.1:{self.port}/{database}"

    def execute(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(f"postgresql://loradock@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            conn.execute(sql)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """Debian's PostgreSQL, initdb + pg_ctl in a temp folder. postgres refuses to run as root (CI runs as
    root), so as root the server runs as the package's ``postgres`` OS user."""
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip(PG_MISSING)
    run_as: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="loradock-pg-"))  # not under pytest's root-only temp folders
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' OS user to run PostgreSQL as "
                        "(Debian's postgresql package creates it: `make postgres`)")
        shutil.chown(root, "postgres", "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    data, log, port = root / "data", root / "server.log", free_port()
    subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(data), "-U", "loradock", "--auth=trust",
                    "-E", "UTF8", "--no-sync"], check=True, capture_output=True, timeout=120)
    started = subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
                              "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"],
                             capture_output=True, text=True, timeout=120)
    if started.returncode != 0:
        raise RuntimeError(f"PostgreSQL did not start: {started.stdout}{started.stderr}{log_tail(log)}")
    yield Postgres(port, root)
    subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True,
                   timeout=60)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The SQLAlchemy URL of an empty preference database: a SQLite file, or a fresh database on the
    session's PostgreSQL server (dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/loradock.db"
        return
    pg: Postgres = request.getfixturevalue("postgres")
    name = f"t_{uuid.uuid4().hex[:16]}"
    pg.execute(f'CREATE DATABASE "{name}"')
    yield pg.url(name)
    pg.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
