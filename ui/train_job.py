"""Training from votes as a subprocess (`loradock train dpo --from-votes`): the UI imports no training code.

The job reads the votes through the server's admin export route with the key the admin typed (passed in the
child's environment, never on its command line), publishes into the store the child is configured for
(LORADOCK_ADAPTERS_DIR, the server's store), and reports progress as JSON lines in its --progress-file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOG_TAIL_CHARS = 2000


@dataclass
class TrainJob:
    """One running or finished training subprocess."""

    id: str
    name: str
    proc: subprocess.Popen[bytes]
    progress: Path
    log: Path

    def events(self) -> list[dict[str, Any]]:
        """The progress lines written so far (a half-written last line is skipped)."""
        if not self.progress.is_file():
            return []
        out = []
        for line in self.progress.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def status(self) -> dict[str, Any]:
        """Where the job is: running, steps, loss points, the published adapter or the error."""
        events = self.events()
        code = self.proc.poll()
        losses = [[e["step"], e["loss"]] for e in events if e["event"] == "log" and "loss" in e]
        evals = [[e["step"], e["eval_loss"]] for e in events if e["event"] == "log" and "eval_loss" in e]
        steps = max((e.get("step", 0) for e in events if e["event"] in ("log", "end")), default=0)
        planned = max((e.get("max_steps", 0) for e in events if e["event"] in ("begin", "log")), default=0)
        export = next((e for e in events if e["event"] == "export"), None)
        published = next((e for e in events if e["event"] == "published"), None)
        error = next((e["message"] for e in events if e["event"] == "error"), None)
        if code not in (None, 0) and error is None:
            error = f"exit code {code}: {self.log_tail()}"
        return {"id": self.id, "name": self.name, "running": code is None, "returncode": code, "steps": steps,
                "max_steps": planned, "train_loss": losses, "val_loss": evals, "export": export,
                "published": published, "error": error}

    def log_tail(self) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-LOG_TAIL_CHARS:]
        except OSError:
            return ""


@dataclass
class TrainJobs:
    """The training jobs this UI process started (one registry per app, passed to the tab)."""

    server_url: str
    jobs: dict[str, TrainJob] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, admin_key: str, name: str, filters: dict[str, Any], recipe: str | None = None,
              max_steps: int | None = None, overwrite: bool = False, quality: dict[str, Any] | None = None,
              ) -> TrainJob:
        """Start `loradock train dpo --from-votes` against the server; returns at once."""
        work = Path(tempfile.mkdtemp(prefix="loradock-ui-train-"))
        cmd = [sys.executable, "-m", "loradock", "train", "dpo", "--from-votes", "--server", self.server_url,
               "--name", name, "--progress-file", str(work / "progress.jsonl"),
               "--output-dir", str(work / "run"), *_filter_flags(filters, quality or {})]
        if recipe:
            cmd += ["--recipe", recipe]
        if max_steps:
            cmd += ["--max-steps", str(int(max_steps))]
        if overwrite:
            cmd.append("--overwrite")
        # The typed key, never one this process inherited; the child reads it for --server only.
        env = {k: v for k, v in os.environ.items() if k != "LORADOCK_ADMIN_KEY"} | {"LORADOCK_ADMIN_KEY": admin_key}
        log = work / "train.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
        job = TrainJob(uuid.uuid4().hex[:12], name, proc, work / "progress.jsonl", log)
        with self._lock:
            self.jobs[job.id] = job
        return job

    def get(self, job_id: str | None) -> TrainJob | None:
        with self._lock:
            return self.jobs.get(job_id or "")

    def running(self) -> bool:
        """Whether any job of this UI is still training (one at a time: the CPUs are shared)."""
        with self._lock:
            return any(j.proc.poll() is None for j in self.jobs.values())


def _filter_flags(filters: dict[str, Any], quality: dict[str, Any]) -> list[str]:
    flags = {"model": "--votes-model", "annotator": "--annotator", "prompt_set": "--prompt-set",
             "since": "--since", "until": "--until"}
    out = [arg for key, flag in flags.items() if filters.get(key) for arg in (flag, str(filters[key]))]
    if filters.get("blind") is not None:
        out.append("--blind" if str(filters["blind"]).lower() == "true" else "--named")
    if quality.get("drop_contradictory") is False:
        out.append("--keep-contradictory")
    if quality.get("drop_near_duplicates"):
        out.append("--drop-near-duplicates")
    if quality.get("min_agreement"):
        out += ["--min-agreement", str(quality["min_agreement"])]
    return out
