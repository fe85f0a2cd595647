#!/usr/bin/env python
"""Bounded load test on loopback: many concurrent streaming clients against a running loradock server.

Checks that no request gets a 5xx other than a clean 503, that every stream either completes with
`data: [DONE]` or is refused cleanly (429/503), and that server memory stays flat. Prints a JSON report and
exits 1 if a check fails.

    python -m loradock.bench.loadtest --server http://127.0.0.1:8000 --clients 200 --duration 120
    python -m loradock.bench.loadtest --server http://127.0.0.1:8000 --quick      # 40 clients, 20 s
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter

import httpx
import psutil


def server_rss(port: int) -> int:
    """RSS of the process listening on ``port`` plus its children (vLLM's engine core), in bytes."""
    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
            proc = psutil.Process(conn.pid)
            return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
    return 0


async def client_loop(
    http: httpx.AsyncClient, models: list[str], deadline: float, max_tokens: int, stats: Counter, errors: list[str]
) -> None:
    while time.monotonic() < deadline:
        body = {
            "model": random.choice(models),
            "stream": True,
            "max_tokens": max_tokens,
            "temperature": 0.7,
            "messages": [{"role": "user", "content": f"Tell me a fact about the number {random.randint(1, 999)}."}],
        }
        try:
            async with http.stream("POST", "/v1/chat/completions", json=body) as r:
                if r.status_code in (429, 503):
                    stats[f"refused_{r.status_code}"] += 1
                    await r.aread()
                    await asyncio.sleep(float(r.headers.get("retry-after", "1")))
                    continue
                if r.status_code != 200:
                    stats[f"status_{r.status_code}"] += 1
                    errors.append(f"{r.status_code}: {(await r.aread())[:200]!r}")
                    continue
                done = False
                async for line in r.aiter_lines():
                    if line == "data: [DONE]":
                        done = True
                    elif line.startswith("data: ") and '"error"' in line[:20]:
                        errors.append(line[:200])
                stats["completed" if done else "incomplete"] += 1
        except httpx.HTTPError as e:
            stats["transport_error"] += 1
            errors.append(repr(e)[:200])


async def run(args: argparse.Namespace) -> dict:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    port = httpx.URL(args.server).port or 80
    async with httpx.AsyncClient(
        base_url=args.server,
        headers=headers,
        timeout=httpx.Timeout(300),
        limits=httpx.Limits(max_connections=args.clients + 10),
    ) as http:
        models = [m["id"] for m in (await http.get("/v1/models")).json()["data"]][: args.models]
        stats: Counter = Counter()
        errors: list[str] = []
        warm = time.monotonic() + 3
        await asyncio.gather(*[client_loop(http, models, warm, args.max_tokens, Counter(), []) for _ in range(4)])
        rss = [server_rss(port)]
        deadline = time.monotonic() + args.duration
        tasks = [
            asyncio.create_task(client_loop(http, models, deadline, args.max_tokens, stats, errors))
            for _ in range(args.clients)
        ]
        while not all(t.done() for t in tasks):
            await asyncio.sleep(1)
            rss.append(server_rss(port))
        await asyncio.gather(*tasks)
        rss.append(server_rss(port))
    growth = (rss[-1] - rss[0]) / max(rss[0], 1)
    report = {
        "clients": args.clients,
        "duration_s": args.duration,
        "models": models,
        **stats,
        "server_5xx": sum(v for k, v in stats.items() if k.startswith("status_5")),
        "rss_start_mb": round(rss[0] / 2**20),
        "rss_peak_mb": round(max(rss) / 2**20),
        "rss_end_mb": round(rss[-1] / 2**20),
        "rss_growth": round(growth, 4),
        "errors": errors[:10],
    }
    report["ok"] = (
        report["server_5xx"] == 0
        and not errors
        and stats["completed"] > 0
        and stats["incomplete"] == 0
        and growth < args.max_rss_growth
    )
    return report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", default="http://127.0.0.1:8000")
    p.add_argument("--api-key", default=None)
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--duration", type=float, default=120)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--models", type=int, default=4, help="Spread load over the first N models listed.")
    p.add_argument("--max-rss-growth", type=float, default=0.10, help="Allowed RSS growth, fraction.")
    p.add_argument("--quick", action="store_true", help="40 clients for 20 s (what CI runs).")
    args = p.parse_args()
    if args.quick:
        args.clients, args.duration = 40, 20
    report = asyncio.run(run(args))
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
