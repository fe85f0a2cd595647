"""The load generator of `loradock bench`: concurrent streaming chat requests and their statistics.

Every server in the benchmark (loradock, vLLM's own, the PEFT baselines) is driven the same way: HTTP
streaming chat completions with ``ignore_eos`` and a fixed ``max_tokens``, a bounded number in flight.
TTFT is request start to the first content chunk; inter-token latency is the gap between content chunks
(servers here send one token per chunk); output tokens come from the final usage chunk when the server
sends one, else from the number of content chunks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

PROMPTS = (
    "Write one sentence about the sea.",
    "What is the capital of France?",
    "List three colors.",
    "Explain gravity briefly.",
    "Give me a tip for learning to cook.",
    "Describe a cat in a few words.",
    "Why is the sky blue?",
    "Name a famous scientist and say why.",
)


@dataclass
class RequestResult:
    """What one streamed request saw."""

    model: str
    ok: bool
    start: float
    end: float
    ttft: float | None = None
    itl: list[float] = field(default_factory=list)
    tokens: int = 0
    error: str | None = None


@dataclass
class LoadStats:
    """Aggregate of one scenario; times in milliseconds, throughput in output tokens per second."""

    requests: int
    errors: int
    output_tokens: int
    duration_s: float
    tokens_per_s: float
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    itl_p50_ms: float | None
    itl_p99_ms: float | None
    peak_rss_mib: float | None = None
    first_error: str | None = None

    def as_dict(self) -> dict:
        return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation; None for no values."""
    if not values:
        return None
    data = sorted(values)
    pos = (len(data) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summarize(results: Sequence[RequestResult], peak_rss_mib: float | None = None) -> LoadStats:
    """Throughput over the whole scenario (first start to last end) and latency percentiles."""
    if not results:
        return LoadStats(0, 0, 0, 0.0, 0.0, None, None, None, None, peak_rss_mib)
    ok = [r for r in results if r.ok]
    duration = max(r.end for r in results) - min(r.start for r in results)
    tokens = sum(r.tokens for r in ok)
    ttfts = [r.ttft * 1000 for r in ok if r.ttft is not None]
    itls = [gap * 1000 for r in ok for gap in r.itl]
    errors = [r for r in results if not r.ok]

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v, 1)

    return LoadStats(
        requests=len(results),
        errors=len(errors),
        output_tokens=tokens,
        duration_s=round(duration, 3),
        tokens_per_s=round(tokens / duration, 1) if duration > 0 else 0.0,
        ttft_p50_ms=ms(percentile(ttfts, 50)),
        ttft_p99_ms=ms(percentile(ttfts, 99)),
        itl_p50_ms=ms(percentile(itls, 50)),
        itl_p99_ms=ms(percentile(itls, 99)),
        peak_rss_mib=peak_rss_mib,
        first_error=errors[0].error if errors else None,
    )


def choose_models(adapters: Sequence[str], n: int, popularity: str, seed: int = 0) -> list[str]:
    """The model of each of ``n`` requests: adapters in rotation (uniform) or Zipf-distributed (s=1)."""
    if popularity not in ("uniform", "zipf"):
        raise ValueError(f"--popularity must be uniform or zipf, not {popularity!r}")
    if popularity == "uniform":
        return [adapters[i % len(adapters)] for i in range(n)]
    weights = [1.0 / (rank + 1) for rank in range(len(adapters))]
    return random.Random(seed).choices(list(adapters), weights=weights, k=n)


async def stream_one(client: object, model: str, prompt: str, max_tokens: int) -> RequestResult:
    """One streaming chat completion; never raises (errors are recorded in the result)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    res = RequestResult(model=model, ok=False, start=start, end=start)
    last, chunks, usage_tokens = None, 0, None
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as resp:  # type: ignore[attr-defined]
            if resp.status_code != 200:
                res.error = f"HTTP {resp.status_code}: {(await resp.aread()).decode(errors='replace')[:300]}"
                return res
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                data = json.loads(line[6:])
                if data.get("usage"):
                    usage_tokens = data["usage"].get("completion_tokens")
                for choice in data.get("choices") or []:
                    if (choice.get("delta") or {}).get("content"):
                        now = time.perf_counter()
                        if last is None:
                            res.ttft = now - start
                        else:
                            res.itl.append(now - last)
                        last, chunks = now, chunks + 1
        res.tokens = usage_tokens if usage_tokens is not None else chunks
        res.ok = True
    except Exception as e:  # a benchmark reports failures, it does not stop at the first one
        res.error = f"{type(e).__name__}: {e}"
    finally:
        res.end = time.perf_counter()
    return res


async def run_load(
    url: str,
    models: Sequence[str],
    concurrency: int,
    max_tokens: int,
    api_key: str | None = None,
    timeout_s: float = 600.0,
) -> list[RequestResult]:
    """Send one request per entry of ``models``, at most ``concurrency`` in flight."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout_s, limits=limits) as client:

        async def one(i: int, model: str) -> RequestResult:
            async with sem:
                return await stream_one(client, model, PROMPTS[i % len(PROMPTS)], max_tokens)

        return await asyncio.gather(*(one(i, m) for i, m in enumerate(models)))


class RssSampler:
    """Samples the RSS of a process and all its children (vLLM's engine runs in child processes)."""

    def __init__(self, pid: int | None, interval_s: float = 0.25) -> None:
        self.pid, self.interval_s = pid, interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> int:
        import psutil

        try:
            proc = psutil.Process(self.pid)
            procs = [proc, *proc.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                continue
        return total

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self.sample())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        if self.pid is not None:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def peak_mib(self) -> float | None:
        return round(self.peak_bytes / 2**20, 1) if self.pid is not None and self.peak_bytes else None


def server_pid(url: str) -> int | None:
    """The pid listening on the URL's port (None when it cannot be seen, e.g. another host or user)."""
    from urllib.parse import urlparse

    import psutil

    port = urlparse(url).port or 80
    try:
        conns = psutil.net_connections(kind="tcp")
    except psutil.Error:
        return None
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
            return c.pid
    return None


def measure(
    url: str,
    models: Sequence[str],
    concurrency: int,
    max_tokens: int,
    api_key: str | None = None,
    pid: int | None = None,
) -> LoadStats:
    """Run one scenario against a server and summarize it (peak RSS of ``pid`` and its children)."""
    with RssSampler(pid) as rss:
        results = asyncio.run(run_load(url, models, concurrency, max_tokens, api_key))
    stats = summarize(results, rss.peak_mib)
    if stats.errors:
        log.warning("%d of %d requests failed; first: %s", stats.errors, stats.requests, stats.first_error)
    return stats


def single_stream(url: str, model: str, max_tokens: int, api_key: str | None = None, requests: int = 3) -> dict:
    """One stream at a time: decode tokens/s (tokens after the first over the time after the first) and the
    inter-token latency p50 of the best of ``requests`` sequential requests."""
    best: dict = {}
    for _ in range(requests):
        r = asyncio.run(run_load(url, [model], 1, max_tokens, api_key))[0]
        if not r.ok or not r.itl:
            return {"error": r.error or "no tokens streamed"}
        stats = {
            "decode_tok_s": round(len(r.itl) / sum(r.itl), 1),
            "itl_p50_ms": round((percentile(r.itl, 50) or 0.0) * 1000, 2),
            "ttft_ms": round((r.ttft or 0.0) * 1000, 1),
            "tokens": r.tokens,
        }
        if not best or stats["decode_tok_s"] > best["decode_tok_s"]:
            best = stats
    return best
