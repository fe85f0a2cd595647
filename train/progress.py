"""Training progress as JSON lines in a file (``--progress-file``): what a UI or a script follows a job by.

Events, one object a line: ``{"event": "export", ...}`` (``--from-votes``), ``{"event": "begin", "max_steps"}``,
``{"event": "log", "step", "max_steps", "loss", ...}``, ``{"event": "end", "step"}``,
``{"event": "published", "name", "path"}`` or ``{"event": "error", "message"}``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback


def write_event(progress_file: str | Path | None, event: str, **fields: Any) -> None:
    """Append one event (with a timestamp) to the progress file, if there is one."""
    if not progress_file:
        return
    Path(progress_file).parent.mkdir(parents=True, exist_ok=True)
    with open(progress_file, "a", encoding="utf-8") as f:
        f.write(json.dumps({"event": event, "time": round(time.time(), 3), **fields}, default=str) + "\n")


class ProgressFile(TrainerCallback):
    """Writes begin, every logged loss, and end to ``path`` (only the main process writes)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            write_event(self.path, "begin", max_steps=state.max_steps)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            numbers = {k: v for k, v in (logs or {}).items() if isinstance(v, int | float)}
            write_event(self.path, "log", step=state.global_step, max_steps=state.max_steps, **numbers)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            write_event(self.path, "end", step=state.global_step)
