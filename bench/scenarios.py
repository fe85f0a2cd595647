"""The scenarios of `loradock bench`, each a function of the run's configuration and the servers it drives.

Throughput loads (:func:`best_of`) run interleaved for ``rounds`` rounds and keep each one's best round:
other work shares the CPU, and the best round is the one least disturbed by it. A baseline server is
measured the same way, interleaved with the loradock server under test (:func:`paired`), so each ratio
compares two figures taken side by side.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from loradock.bench.adapters import Published, publish_copies
from loradock.bench.load import measure, percentile, single_stream

log = logging.getLogger(__name__)


@dataclass
class Target:
    """A server to drive: its URL, bearer key and pid (for the RSS of its process tree)."""

    url: str
    api_key: str | None = None
    pid: int | None = None


def _models(url: str, api_key: str | None) -> list[dict]:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    r = httpx.get(f"{url}/v1/models", headers=headers, timeout=30)
    r.raise_for_status()
    return r.json()["data"]


def listed_models(target: Target) -> list[dict]:
    """The server's /v1/models entries."""
    return _models(target.url, target.api_key)


def wait_for_models(target: Target, names: Iterable[str], timeout_s: float = 60) -> None:
    """Wait until the server lists every name (it picks up new store folders within a poll interval)."""
    names = list(names)
    deadline = time.monotonic() + timeout_s
    while True:
        missing = set(names) - {m["id"] for m in listed_models(target)}
        if not missing:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the server at {target.url} does not list {sorted(missing)[:5]} after {timeout_s:.0f} s: is "
                "--adapters-dir the store that server watches?"
            )
        time.sleep(0.5)


def warm(target: Target, models: Iterable[str]) -> None:
    """One short request per model (loads adapters, fills caches), not measured."""
    measure(target.url, list(dict.fromkeys(models)), 8, 2, target.api_key)


def best_of(rounds: int, loads: dict[str, tuple[Target, list[str]]], concurrency: int,
            max_tokens: int) -> dict[str, dict]:
    """Run the named loads (target, request models) interleaved ``rounds`` times; keep each one's best round."""
    best: dict[str, dict] = {}
    for r in range(rounds):
        for name, (target, models) in loads.items():
            stats = measure(target.url, models, concurrency, max_tokens, target.api_key, target.pid).as_dict()
            log.info("%s round %d: %.1f tokens/s", name, r + 1, stats["tokens_per_s"])
            if name not in best or stats["tokens_per_s"] > best[name]["tokens_per_s"]:
                best[name] = stats
    return best


def single_streams(rounds: int, streams: dict[str, tuple[Target, str]], max_tokens: int) -> dict[str, dict]:
    """One stream at a time per named (target, model), interleaved; the best of ``rounds`` each."""
    best: dict[str, dict] = {}
    for _ in range(rounds):
        for name, (target, model) in streams.items():
            stats = single_stream(target.url, model, max_tokens, target.api_key, requests=1)
            if name not in best or stats.get("decode_tok_s", 0) > best[name].get("decode_tok_s", 0):
                best[name] = stats
    return best


def paired(rounds: int, label: str, baseline: Target, main: Target, loads: dict[str, tuple[list[str], list[str]]],
           concurrency: int, max_tokens: int) -> dict[str, Any]:
    """Each load on the baseline and on the loradock server under test, interleaved.

    ``loads`` maps a load name to (models on the baseline, models on loradock). Returns the baseline's
    figures per load, each with the loradock figure measured beside it under ``loradock``.
    """
    runs: dict[str, tuple[Target, list[str]]] = {}
    for name, (base_models, main_models) in loads.items():
        runs[f"{label}:{name}"] = (baseline, base_models)
        runs[f"loradock:{name}"] = (main, main_models)
    best = best_of(rounds, runs, concurrency, max_tokens)
    return {name: {**best[f"{label}:{name}"], "loradock": best[f"loradock:{name}"]} for name in loads}


def cold_adapter(target: Target, ledger: Published, source: str, samples: int) -> dict:
    """Publish fresh copies of ``source`` and time each one's first request (its hot load)."""
    tag = uuid.uuid4().hex[:6]
    names = [f"bench-cold-{tag}-{i}" for i in range(samples)]
    ttfts = []
    try:
        for name in names:
            publish_copies(ledger, source, [name])
            wait_for_models(target, [name])
            stats = measure(target.url, [name], 1, 8, target.api_key)
            if stats.ttft_p50_ms is not None:
                ttfts.append(stats.ttft_p50_ms)
        warm_ttft = measure(target.url, [names[0]] * 3, 1, 8, target.api_key).ttft_p50_ms
    finally:
        ledger.remove(names)
    return {"samples_ms": ttfts, "ttft_p50_ms": percentile(ttfts, 50), "warm_ttft_p50_ms": warm_ttft}


def rotation(target: Target, ledger: Published, source: str, count: int, requests: int, concurrency: int,
             max_tokens: int) -> dict[str, dict]:
    """The same load on one adapter, then rotating over ``count`` distinct copies."""
    names = [f"bench-rot-{i:02d}" for i in range(count)]
    n = max(requests, count)

    def run(models: list[str]) -> Any:
        return measure(target.url, models, concurrency, max_tokens, target.api_key, target.pid)

    try:
        publish_copies(ledger, source, names)
        wait_for_models(target, names)
        # Steady state: every adapter is loaded once first (that hot-load cost is what cold_adapter measures;
        # the time of this first pass is kept as first_pass_s), then the same load runs on 1 and on `count`.
        started = time.monotonic()
        warm(target, names)
        first_pass_s = round(time.monotonic() - started, 2)
        one = run([names[0]] * n)
        many = run([names[i % len(names)] for i in range(n)])
    finally:
        ledger.remove(names)
    return {"adapters_1": one.as_dict(), "adapters_64": {**many.as_dict(), "first_pass_s": first_pass_s,
                                                          "adapters": count}}
