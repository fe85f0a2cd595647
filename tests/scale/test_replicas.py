"""`loradock serve --replicas 2` on a local Ray cluster: two real vLLM replicas behind the adapter-aware ingress,
driven through the official openai client.

Memory: each replica is a full server with small engine settings (KV cache 1 GiB, 8 sequences, 2 LoRA slots);
the test measures the peak RSS of the whole process tree (Ray included) and prints it with the other figures.
It runs beside the session's shared server, inside the engine lock that server holds (or takes the lock).
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from loradock.core.procs import NotHealthy, free_port, log_tail, start_logged, stop
from loradock.core.store import AdapterStore
from loradock.core.synthetic import make_synthetic_adapters
from tests.conftest import BASE_MODEL, ENGINE_LOCK, REPO

pytest.importorskip("ray.serve", reason="Ray Serve is not installed: `make setup RAY=1` (make test installs it)")
pytestmark = pytest.mark.replicas
ADAPTERS = ["syn-a", "syn-b"]
HEADER = "x-loradock-replica"
API, ADMIN = "scale-key", "scale-admin"
ENGINE = {"LORADOCK_KV_CACHE_SPACE_GIB": "1", "LORADOCK_MAX_NUM_SEQS": "8", "LORADOCK_MAX_LORAS": "2",
          "LORADOCK_MAX_CPU_LORAS": "4", "LORADOCK_MAX_MODEL_LEN": "512", "LORADOCK_GPU_MEMORY_UTILIZATION": "0.3",
          "LORADOCK_DTYPE": "bfloat16",
          "LORADOCK_COMPILE": "false"}  # routing, not speed: two engines compiling at once would double start-up


@contextmanager
def engine_lock() -> Iterator[None]:
    """The machine's one-engine lock: already ours when this session's shared server holds it (or the
    `flock` that started this pytest does); else taken here."""
    ours = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    ino = os.stat(ENGINE_LOCK).st_ino if os.path.exists(ENGINE_LOCK) else None
    holders = {int(line.split()[4]) for line in Path("/proc/locks").read_text().splitlines()
               if "FLOCK" in line and "->" not in line and ino is not None and line.split()[5].endswith(f":{ino}")}
    held = bool(holders & ours)
    if held:
        yield
        return
    with open(ENGINE_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _tree(proc: subprocess.Popen) -> list[psutil.Process]:
    try:
        root = psutil.Process(proc.pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@dataclass
class Cluster:
    url: str
    store: AdapterStore
    proc: subprocess.Popen
    log: Path
    dashboard: str
    peak_rss_gib: float = 0.0
    peak_pss_gib: float = 0.0
    figures: dict[str, object] = field(default_factory=dict)

    @property
    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=API, max_retries=0, timeout=120)

    def replicas(self) -> list[dict]:
        try:
            r = httpx.get(f"{self.url}/v1/replicas", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)
        except httpx.HTTPError:  # not listening yet
            return []
        return r.json()["data"] if r.status_code == 200 else []

    def chat(self, model: str, max_tokens: int = 8) -> str:
        """One chat request; returns the id of the replica that answered."""
        raw = self.client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=max_tokens, temperature=0)
        assert raw.parse().choices[0].message.content is not None
        return raw.headers[HEADER]


def _wait_for(cluster: Cluster, predicate, timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if cluster.proc.poll() is not None:
            raise NotHealthy(f"loradock serve --replicas exited: {log_tail(cluster.log, 4000)}")
        if predicate():
            return time.monotonic() - start
        time.sleep(0.5)
    raise NotHealthy(f"{what} not within {timeout:.0f} s; log:\n{log_tail(cluster.log, 4000)}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, base_info) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("replicas")
    store = AdapterStore(root / "adapters")
    make_synthetic_adapters(store, base_info, ADAPTERS)
    port, dashboard = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({**ENGINE, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                        "LORADOCK_API_KEY": API, "LORADOCK_ADMIN_KEY": ADMIN, "LORADOCK_BASE_MODEL": str(BASE_MODEL),
                        "LORADOCK_ADAPTERS_DIR": str(store.root), "LORADOCK_RAG_DIR": str(root / "rag"),
                        "LORADOCK_DB_URL": f"sqlite:///{root / 'db.sqlite'}", "LORADOCK_STORE_POLL_SECONDS": "0.5",
                        "LORADOCK_RAY_DASHBOARD_PORT": str(dashboard), "LORADOCK_RAY_METRICS_PORT": str(free_port())})
    log = root / "serve.log"
    with engine_lock():
        proc = start_logged([sys.executable, "-m", "loradock", "serve", "--replicas", "2", "--port", str(port)],
                            log, env=env, cwd=REPO)
        c = Cluster(f"http://127.0.0.1:{port}", store, proc, log, f"http://127.0.0.1:{dashboard}")
        sampling = threading.Event()

        def sample() -> None:  # the peak memory of everything loradock and Ray started (PSS: shared pages once)
            while not sampling.is_set():
                rss = pss = 0
                for p in _tree(proc):
                    with suppress(psutil.Error):
                        full = p.memory_full_info()
                        rss, pss = rss + full.rss, pss + full.pss
                c.peak_rss_gib = max(c.peak_rss_gib, rss / 2**30)
                c.peak_pss_gib = max(c.peak_pss_gib, pss / 2**30)
                time.sleep(2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            c.figures["start_s"] = round(_wait_for(c, lambda: len(c.replicas()) == 2, 900, "2 replicas"), 1)
            yield c
        finally:
            sampling.set()
            left = _tree(proc)
            stop(proc, timeout=90)
            for p in left[1:]:  # what a failed shutdown left behind
                if p.is_running():
                    p.kill()
            print(f"\nreplicas figures: {c.figures}; peak memory of the process tree: RSS {c.peak_rss_gib:.2f} GiB, "
                  f"PSS {c.peak_pss_gib:.2f} GiB")


def test_each_adapter_stays_on_the_replica_that_has_it(cluster: Cluster) -> None:
    for name in ADAPTERS:  # first requests: Ray places each adapter (on the replica with the fewest)
        cluster.chat(name)
    time.sleep(1)  # the replicas report their resident adapters to Ray's routers
    models = [*ADAPTERS, BASE_MODEL.name] * 8
    with ThreadPoolExecutor(4) as pool:
        served = list(zip(models, pool.map(cluster.chat, models), strict=True))
    by_model = {m: Counter(r for name, r in served if name == m) for m in set(models)}
    cluster.figures["requests_per_replica"] = {m: dict(c) for m, c in by_model.items()}
    for name in ADAPTERS:
        assert len(by_model[name]) == 1, f"{name} was answered by several replicas: {by_model}"
    assert sum(by_model[BASE_MODEL.name].values()) == 8
    resident = {r["replica_id"]: r["resident"] for r in cluster.replicas()}
    for name in ADAPTERS:
        (holder,) = by_model[name]
        assert name in resident[holder], resident


def test_admin_calls_and_listings_act_on_every_replica(cluster: Cluster) -> None:
    ids = sorted(r["replica_id"] for r in cluster.replicas())
    admin = {"Authorization": f"Bearer {ADMIN}"}
    unload = httpx.post(f"{cluster.url}/v1/unload_lora_adapter", json={"lora_name": "syn-b"}, headers=admin,
                        timeout=60)
    assert unload.status_code == 200 and unload.headers["x-loradock-replicas"] == ",".join(ids)
    for _ in range(4):  # refused on every replica, wherever Ray sends it
        with pytest.raises(openai.NotFoundError):
            cluster.chat("syn-b")
    listed = {m.id: m for m in cluster.client.models.list().data}
    assert "syn-b" not in listed and sorted(listed["syn-a"].model_extra["replicas"]) == ids
    load = httpx.post(f"{cluster.url}/v1/load_lora_adapter", json={"lora_name": "syn-b"}, headers=admin, timeout=60)
    assert load.status_code == 200, load.text
    cluster.chat("syn-b")

    metrics = httpx.get(f"{cluster.url}/metrics", timeout=60).text
    assert all(f'replica="{rid}"' in metrics for rid in ids), "loradock's metrics carry a replica label"
    token = (Path.home() / ".ray" / "auth_token").read_text().strip()
    version = httpx.get(f"{cluster.dashboard}/api/version", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert version.status_code == 200 and version.json()["ray_version"] == "2.60.0", "Ray's dashboard is on"


def test_an_adapter_published_into_the_shared_store_is_servable_on_both(cluster: Cluster) -> None:
    ids = sorted(r["replica_id"] for r in cluster.replicas())
    manifest = cluster.store.read_manifest("syn-a").model_copy(update={"name": "syn-new"})
    cluster.store.copy_from(cluster.store.path("syn-a"), manifest)

    def everywhere() -> bool:
        cards = {m.id: m for m in cluster.client.models.list().data}
        return "syn-new" in cards and sorted(cards["syn-new"].model_extra["replicas"]) == ids

    cluster.figures["store_to_servable_s"] = round(_wait_for(cluster, everywhere, 30, "syn-new on both"), 1)
    assert cluster.chat("syn-new") in ids

    # A republish is a new version on both; a rollback changes the shared store once, not once per replica.
    def versions() -> dict[str, int]:
        return next(m for m in cluster.client.models.list().data if m.id == "syn-new").model_extra["version_on"]

    first = versions()
    assert len(set(first.values())) == 1, first
    cluster.store.copy_from(cluster.store.path("syn-b"), manifest, overwrite=True)
    _wait_for(cluster, lambda: set(versions().values()) == {first[ids[0]] + 1}, 30, "version 2 on both")
    back = httpx.post(f"{cluster.url}/v1/adapters/syn-new/rollback", headers={"Authorization": f"Bearer {ADMIN}"},
                      timeout=60)
    assert back.status_code == 200, back.text
    assert versions() == first, "both replicas serve the version rolled back to, one step back"


def test_a_killed_replica_is_replaced_and_requests_keep_succeeding(cluster: Cluster) -> None:
    before = cluster.replicas()
    victim = next(r for r in before if "syn-a" in r["resident"])
    engine_procs = psutil.Process(victim["pid"]).children(recursive=True)
    outcomes: list[tuple[float, str, str]] = []
    stop_traffic = threading.Event()

    def traffic(models: list[str]) -> None:
        while not stop_traffic.is_set():
            for model in models:
                sent = time.monotonic()
                try:
                    outcomes.append((sent, model, cluster.chat(model)))
                except openai.APIError as e:
                    outcomes.append((sent, model, f"error: {e!r}"))

    threads = [threading.Thread(target=traffic, args=(m,)) for m in (["syn-a"], [BASE_MODEL.name, "syn-b"])]
    for t in threads:
        t.start()
    time.sleep(3)
    killed_at = time.monotonic()
    os.kill(victim["pid"], signal.SIGKILL)  # mid-traffic, no warning
    try:
        recovery = _wait_for(cluster, lambda: len(ids := [r["replica_id"] for r in cluster.replicas()]) == 2
                             and victim["replica_id"] not in ids, 600, "a replacement replica")
        time.sleep(2)
    finally:
        stop_traffic.set()
        for t in threads:
            t.join(timeout=180)
    after = [o for o in outcomes if o[0] > killed_at]
    failures = [o for o in outcomes if o[2].startswith("error")]
    cluster.figures.update(recovery_s=round(recovery, 1), requests_during_recovery=len(after),
                           failed=len(failures), per_replica_after_kill=dict(Counter((o[1], o[2]) for o in after)))
    assert after and not failures, failures[:5]
    assert {o[2] for o in after} <= {r["replica_id"] for r in cluster.replicas()} | {victim["replica_id"]}
    new = {r["replica_id"] for r in cluster.replicas()} - {r["replica_id"] for r in before}
    assert len(new) == 1
    assert cluster.chat("syn-a") != victim["replica_id"] and cluster.chat(BASE_MODEL.name)
    time.sleep(2)
    assert not [p.pid for p in engine_procs if p.is_running()], "the killed replica's engine processes are reaped"
