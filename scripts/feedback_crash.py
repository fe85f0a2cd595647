#!/usr/bin/env python
"""kill -9 the server in the middle of a burst of /v1/feedback submissions; no acknowledged record may be lost.

Starts a server (default: the real `loradock serve`), fires --records submissions from --concurrency
clients, SIGKILLs the server once --kill-after acknowledgements arrived, restarts it on the same database,
and checks that every acknowledged id is there. Prints a JSON report; exits 1 on any loss.

    python scripts/feedback_crash.py                 # 1,000 submissions, kill after 400
    python scripts/feedback_crash.py --quick         # 300 submissions, kill after 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from loradock.core.procs import NotHealthy, free_port, log_tail, start_logged, stop, wait_healthy

API, ADMIN = "crash-api", "crash-admin"


def start(cmd: str, port: int, env: dict[str, str], log: Path, timeout: float = 600) -> subprocess.Popen:
    proc = start_logged([*shlex.split(cmd), "--port", str(port)], log, env=env)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc, timeout=timeout, interval=0.5)
    except NotHealthy as e:
        raise SystemExit(f"{e}: {log_tail(log, 2000)}") from e
    return proc


def row(i: int) -> dict:
    return {"prompt": [{"role": "user", "content": f"question {i}"}],
            "chosen": [{"role": "assistant", "content": f"good answer {i}"}],
            "rejected": [{"role": "assistant", "content": f"bad answer {i}"}], "annotator": "crash-test"}


async def burst(url: str, records: int, concurrency: int, kill_after: int, proc: subprocess.Popen) -> list[str]:
    acked: list[str] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(records):
        queue.put_nowait(i)

    async def worker(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            try:
                r = await http.post("/v1/feedback", json=row(i))
            except httpx.HTTPError:
                return  # the server is gone: unacknowledged, so it may be lost
            if r.status_code == 200:
                acked.append(r.json()["id"])
                if len(acked) == kill_after:
                    proc.send_signal(signal.SIGKILL)

    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {API}"}, timeout=30) as http:
        await asyncio.gather(*[worker(http) for _ in range(concurrency)])
    return acked


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server-cmd", default=f"{sys.executable} -m loradock serve",
                   help="Command that starts a server; '--port N' is appended.")
    p.add_argument("--records", type=int, default=1000)
    p.add_argument("--kill-after", type=int, default=400)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--db-url", help="SQLAlchemy URL of an empty database (default: a new SQLite file).")
    args = p.parse_args()
    if args.quick:
        args.records, args.kill_after = 300, 100
    work = Path(tempfile.mkdtemp(prefix="loradock-crash-"))
    env = {**os.environ, "LORADOCK_DB_URL": args.db_url or f"sqlite:///{work}/feedback.db", "LORADOCK_API_KEY": API,
           "LORADOCK_ADMIN_KEY": ADMIN, "LORADOCK_ADAPTERS_DIR": str(work / "adapters"),
           "LORADOCK_RAG_DIR": str(work / "rag")}
    log = work / "server.log"
    port = free_port()
    proc = start(args.server_cmd, port, env, log)
    url = f"http://127.0.0.1:{port}"
    acked = asyncio.run(burst(url, args.records, args.concurrency, args.kill_after, proc))
    proc.wait(timeout=30)
    killed = proc.returncode == -signal.SIGKILL
    port = free_port()
    proc = start(args.server_cmd, port, env, log)
    try:
        stored: set[str] = set()
        offset = 0
        while True:
            page = httpx.get(f"http://127.0.0.1:{port}/v1/feedback", params={"limit": 1000, "offset": offset},
                             headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30).json()["data"]
            stored |= {r["id"] for r in page}
            if len(page) < 1000:
                break
            offset += 1000
    finally:
        stop(proc)
    lost = sorted(set(acked) - stored)
    report = {"records_sent": args.records, "acknowledged": len(acked), "killed_with_sigkill": killed,
              "stored_after_restart": len(stored), "lost_acknowledged": len(lost), "ok": killed and not lost}
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
