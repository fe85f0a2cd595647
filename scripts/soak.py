"""Soak test of hot swap under traffic: concurrent greedy streams while adapters are republished, removed and
rolled back every few seconds. Prints streams, failures, 5xx, wrong-version answers and server memory.

Each weight set is first served under its own name; its greedy answer is that weight set's fingerprint. An
answer for ``soak-N`` must match a weight set that was current for that name while the request ran (a pinned
``soak-N@V`` must match version V exactly); anything else is a wrong-version (or mixed) answer.

    flock /tmp/loradock-engine.lock .venv/bin/python scripts/soak.py            # 32 streams, 5 minutes
    flock /tmp/loradock-engine.lock .venv/bin/python scripts/soak.py --quick    # 8 streams, 25 seconds
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import psutil

from loradock.core.base_model import load_base_info
from loradock.core.procs import free_port, offline_env, running
from loradock.core.store import AdapterStore
from loradock.core.synthetic import make_synthetic_adapters

REPO = Path(__file__).resolve().parents[1]
PROMPT = [{"role": "user", "content": "Write one sentence about the sea."}]
WEIGHT_SETS = ["w0", "w1", "w2", "w3"]
NAMES = ["soak-0", "soak-1"]
log = logging.getLogger("soak")


@dataclass
class Timeline:
    """Which weight set each name serves, over time (None: removed), as the mutator changed it."""

    events: dict[str, list[tuple[float, str | None]]] = field(default_factory=dict)
    versions: dict[str, dict[int, str]] = field(default_factory=dict)  # name -> version -> weight set
    lock: threading.Lock = field(default_factory=threading.Lock)

    def set(self, name: str, weights: str | None) -> None:
        with self.lock:
            self.events.setdefault(name, []).append((time.monotonic(), weights))

    def allowed(self, name: str, start: float, end: float, slack: float) -> set[str | None]:
        with self.lock:
            events = list(self.events.get(name, []))
        before = [w for t, w in events if t <= start - slack]
        during = {w for t, w in events if start - slack < t <= end}
        return {*before[-1:], *during}


@dataclass
class Tally:
    counts: Counter = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, key: str, detail: str | None = None) -> None:
        with self.lock:
            self.counts[key] += 1
            if detail is not None and len(self.wrong) < 20:
                self.wrong.append(detail)


def stream(client: openai.OpenAI, model: str, max_tokens: int) -> str:
    parts = []
    for chunk in client.chat.completions.create(model=model, messages=PROMPT, temperature=0, max_tokens=max_tokens,
                                                stream=True, extra_body={"ignore_eos": True}):
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
    return "".join(parts)


def _common_prefix(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def classify(text: str, refs: dict[str, str]) -> tuple[str | None, bool]:
    """The weight set whose reference answer this is, and whether it matched exactly. Not exactly: the one
    whose answer shares the longest opening (None on a tie), for engines whose batches round differently."""
    exact = next((w for w, ref in refs.items() if ref == text), None)
    if exact is not None:
        return exact, True
    ranked = sorted(((_common_prefix(text, ref), w) for w, ref in refs.items()), reverse=True)
    return (ranked[0][1] if ranked[0][0] > ranked[1][0] else None), False


def rss_mb(pid: int) -> dict[str, int]:
    """Resident memory of the server process and of each vLLM child (engine core, worker), MiB."""
    proc = psutil.Process(pid)
    out = {"server": proc.memory_info().rss}
    for child in proc.children(recursive=True):
        name = child.name().removeprefix("VLLM::").lower()
        out[name] = out.get(name, 0) + child.memory_info().rss
    sizes = {k: round(v / 2**20) for k, v in out.items()}
    return {**sizes, "total": sum(sizes.values())}


def worker(client, refs, timeline, tally, stop, max_tokens, slack, seed, pinned_share) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        name = rng.choice(NAMES)
        with timeline.lock:
            kept = dict(timeline.versions.get(name, {}))
        pinned = rng.random() < pinned_share and kept
        version = rng.choice(sorted(kept)) if pinned else None
        model = f"{name}@{version}" if version else name
        start = time.monotonic()
        try:
            text = stream(client, model, max_tokens)
        except openai.NotFoundError:
            tally.add("not_found")  # removed, or a pinned version collected: a 4xx the client can act on
            continue
        except openai.APIStatusError as e:
            tally.add("5xx" if e.status_code >= 500 else f"{e.status_code}", f"{model}: {e}")
            continue
        except openai.APIError as e:
            tally.add("failed_stream", f"{model}: {e}")
            continue
        got, exact = classify(text, refs)
        expected = {kept[version]} if version else timeline.allowed(name, start, time.monotonic(), slack)
        if got is None or got not in expected:
            tally.add("wrong_version", f"{model}: answered like {got}, expected one of {sorted(map(str, expected))}")
        else:
            tally.add(("ok_pinned" if version else "ok") + ("" if exact else "_by_opening"))


def publish(store: AdapterStore, weights: str, name: str) -> None:
    manifest = store.read_manifest(weights).model_copy(update={"name": name, "description": f"weights {weights}"})
    store.copy_from(store.path(weights), manifest, overwrite=True)


def current_version(admin: httpx.Client, name: str) -> int | None:
    rows = admin.get("/v1/adapters").json()["data"]
    return next((r["version"] for r in rows if r["id"] == name), None)


def kept_versions(admin: httpx.Client, name: str) -> set[int]:
    r = admin.get(f"/v1/adapters/{name}/versions")
    return {row["version"] for row in r.json()["data"]} if r.status_code == 200 else set()


def mutator(store, admin, timeline, tally, stop, every, seed) -> None:
    """Every few seconds: republish a name with other weights, remove it, bring it back, or roll it back."""
    rng = random.Random(seed)
    serving = {name: WEIGHT_SETS[i] for i, name in enumerate(NAMES)}
    while not stop.wait(every):
        name = rng.choice(NAMES)
        action = rng.choice(["republish", "republish", "rollback", "rollback_cli", "remove"])
        if serving[name] is None:
            action = "republish"
        tally.add(f"op_{action}")
        if action == "republish":
            weights = rng.choice([w for w in WEIGHT_SETS if w != serving[name]])
            timeline.set(name, weights)
            publish(store, weights, name)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                number = current_version(admin, name)
                if number is not None and number not in timeline.versions.get(name, {}) or \
                        timeline.versions.get(name, {}).get(number) == weights:
                    break
                time.sleep(0.1)
            with timeline.lock:
                timeline.versions.setdefault(name, {})[number] = weights
            serving[name] = weights
        elif action == "remove":
            timeline.set(name, None)
            store.remove(name)
            serving[name] = None
        else:
            on_disk = kept_versions(admin, name)
            with timeline.lock:  # forget versions the server has collected
                kept = {n: w for n, w in timeline.versions.get(name, {}).items() if n in on_disk}
                timeline.versions[name] = kept
            if len(kept) < 2:
                continue
            if action == "rollback":
                r = admin.post(f"/v1/adapters/{name}/rollback", json={})
                if r.status_code != 200:
                    tally.add("op_failed", f"rollback {name}: {r.text}")
                    continue
                number = r.json()["version"]
            else:
                number = rng.choice(sorted(kept))
                out = subprocess.run([sys.executable, "-m", "loradock", "adapters", "rollback", name, "--to",
                                      str(number), "--adapters-dir", str(store.root)], capture_output=True,
                                     text=True, env=offline_env(), cwd=REPO)
                if out.returncode != 0:  # e.g. that version was just garbage-collected
                    tally.add("op_failed", f"cli rollback {name} --to {number}: {out.stderr[-200:]}")
                    continue
            weights = kept.get(number)
            timeline.set(name, weights)
            serving[name] = weights


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--every", type=float, default=3.0, help="Seconds between store changes (0: none, a control).")
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--pinned-share", type=float, default=0.2, help="Share of requests that pin name@N.")
    ap.add_argument("--dtype", default="float32", help="Engine dtype. float32 rounds alike in every batch, so each "
                    "answer must equal its version's reference exactly; bfloat16 does not.")
    ap.add_argument("--quick", action="store_true", help="8 streams for 25 seconds.")
    ap.add_argument("--out", type=Path, help="Write the summary as JSON here too.")
    args = ap.parse_args()
    if args.quick:
        args.streams, args.seconds = 8, 25
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="loradock-soak-"))
    store = AdapterStore(root / "adapters")
    base = load_base_info(REPO / "models" / "SmolLM2-135M-Instruct")
    # Far from the base and from each other, so that answers part from their first words.
    make_synthetic_adapters(store, base, WEIGHT_SETS, seed=100, scale=2.0)
    for weights, name in zip(WEIGHT_SETS, NAMES, strict=False):
        publish(store, weights, name)
    port = free_port()
    env = offline_env(LORADOCK_ADAPTERS_DIR=str(store.root), LORADOCK_STORE_POLL_SECONDS="0.5",
                      LORADOCK_KEEP_VERSIONS="3", LORADOCK_API_KEY="soak", LORADOCK_ADMIN_KEY="soak-admin",
                      LORADOCK_MAX_LORAS="4", LORADOCK_MAX_CPU_LORAS="8", LORADOCK_RAG_DIR=str(root / "rag"),
                      LORADOCK_DB_URL=f"sqlite:///{root / 'db.sqlite'}", LORADOCK_DTYPE=args.dtype)
    url = f"http://127.0.0.1:{port}"
    with running([sys.executable, "-m", "loradock", "serve", "--port", str(port)], url, root / "server.log",
                 env=env, cwd=REPO) as proc:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="soak-admin", max_retries=0, timeout=120)
        admin = httpx.Client(base_url=url, headers={"Authorization": "Bearer soak-admin"}, timeout=60)
        refs = {w: stream(client, w, args.max_tokens) for w in WEIGHT_SETS}
        log.info("reference answers: %s", json.dumps(refs))
        shared = max(_common_prefix(refs[a], refs[b]) for a in refs for b in refs if a < b)
        if shared >= 8:
            log.error("two weight sets open alike (%d characters); the check needs answers that part at once",
                      shared)
            return 2
        timeline, tally, stop = Timeline(), Tally(), threading.Event()
        for weights, name in zip(WEIGHT_SETS, NAMES, strict=False):
            timeline.set(name, weights)
            timeline.versions[name] = {current_version(admin, name) or 1: weights}
        rss_before = rss_mb(proc.pid)
        threads = [threading.Thread(target=worker, args=(client, refs, timeline, tally, stop, args.max_tokens,
                                                         1.5, i, args.pinned_share), daemon=True)
                   for i in range(args.streams)]
        if args.every > 0:
            threads.append(threading.Thread(target=mutator, args=(store, admin, timeline, tally, stop, args.every, 7),
                                            daemon=True))
        started = time.monotonic()
        for t in threads:
            t.start()
        samples = []
        while time.monotonic() - started < args.seconds:
            time.sleep(min(10.0, args.seconds / 5))
            samples.append(rss_mb(proc.pid))
            log.info("%.0f s: %s; RSS MiB %s", time.monotonic() - started, dict(tally.counts), samples[-1])
        stop.set()
        for t in threads:
            t.join(180)
        health = httpx.get(f"{url}/health").status_code
        time.sleep(10)  # idle: what is still held once the traffic stops
        rss_after = rss_mb(proc.pid)
        metrics = httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer soak-admin"}).text
    answered = sum(v for k, v in tally.counts.items() if k.startswith("ok") or k == "wrong_version")
    summary = {"streams": args.streams, "seconds": args.seconds, "dtype": args.dtype, "requests": sum(
        v for k, v in tally.counts.items() if not k.startswith("op_")), "answered": answered,
        "counts": dict(tally.counts), "failed_streams": tally.counts["failed_stream"], "http_5xx": tally.counts["5xx"],
        "wrong_version": tally.counts["wrong_version"], "examples": tally.wrong, "health_after": health,
        "rss_mib_before": rss_before, "rss_mib_after_idle": rss_after,
        "rss_mib_total_samples": [s["total"] for s in samples],
        "rss_mib_server_samples": [s["server"] for s in samples],
        "engine_restarts": next((ln.split()[-1] for ln in metrics.splitlines()
                                 if ln.startswith("loradock_engine_restarts_total")), None)}
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    bad = summary["failed_streams"] or summary["http_5xx"] or summary["wrong_version"] or health != 200
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
