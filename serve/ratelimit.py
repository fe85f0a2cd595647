"""Per-key rate limit for feedback writes: a token bucket per bearer key (per client address without one)."""

from __future__ import annotations

import hashlib
import math
import threading
import time

from fastapi import Request

from loradock.serve.errors import TooManyRequests

MAX_BUCKETS = 10_000  # past this, full buckets (idle keys) are forgotten


class RateLimiter:
    """``per_minute`` records in a burst, refilled at ``per_minute / 60`` a second; 0 disables it."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill)
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """Spend one token for ``key``; returns 0 when allowed, else the seconds until one is free."""
        if self.per_minute <= 0:
            return 0.0
        rate, now = self.per_minute / 60.0, time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - last) * rate)
            if tokens < 1:
                self._buckets[key] = (tokens, now)
                return (1 - tokens) / rate
            self._buckets[key] = (tokens - 1, now)
            if len(self._buckets) > MAX_BUCKETS:
                self._forget_full(now, rate)
        return 0.0

    def _forget_full(self, now: float, rate: float) -> None:
        for key, (tokens, last) in list(self._buckets.items()):
            if tokens + (now - last) * rate >= self.per_minute:
                del self._buckets[key]


def _caller(request: Request) -> str:
    header = request.headers.get("authorization", "")
    if header:
        return "key:" + hashlib.sha256(header.encode()).hexdigest()[:32]
    return "addr:" + (request.client.host if request.client else "?")


async def feedback_limit(request: Request) -> None:
    """Refuse a feedback write past LORADOCK_FEEDBACK_PER_MINUTE for this key with a 429 and Retry-After."""
    state = request.app.state
    limiter: RateLimiter | None = getattr(state, "feedback_limiter", None)
    if limiter is None:  # one per app, made on first use
        limiter = state.feedback_limiter = RateLimiter(state.settings.feedback_per_minute)
    wait = limiter.take(_caller(request))
    if wait > 0:
        raise TooManyRequests(f"too many feedback records from this key: at most {limiter.per_minute} a minute; "
                              f"retry in {math.ceil(wait)} s", code="feedback_rate_limited",
                              headers={"Retry-After": str(math.ceil(wait))})
