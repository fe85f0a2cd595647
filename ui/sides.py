"""What both Compare modes share: one side of a comparison, streaming every side at once, cited passages."""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

from loradock.ui.client import ServerClient, StreamResult

_UI_INTERVAL_S = 0.15  # how often streamed columns repaint


@dataclasses.dataclass(frozen=True)
class Side:
    """One column of a comparison: what was asked of which model."""

    label: str
    approach: str
    model: str
    messages: list[dict[str, str]]
    rag: dict[str, Any] | None = None
    version: str | None = None


def stream_sides(client: ServerClient, sides: list[Side], temperature: float,
                 max_tokens: int) -> Iterator[list[StreamResult]]:
    """Run every side at once (one thread each); yield all their current results as they change."""
    latest = [StreamResult() for _ in sides]
    updates: queue.Queue[tuple[int, StreamResult]] = queue.Queue()

    def work(i: int, side: Side) -> None:
        for result in client.stream_chat(side.model, side.messages, temperature=temperature,
                                         max_tokens=max_tokens, rag=side.rag):
            updates.put((i, dataclasses.replace(result)))

    threads = [threading.Thread(target=work, args=(i, s), daemon=True) for i, s in enumerate(sides)]
    for t in threads:
        t.start()
    last_paint = 0.0
    while not all(r.done for r in latest):
        try:
            i, result = updates.get(timeout=0.5)
            latest[i] = result
        except queue.Empty:
            pass
        if time.monotonic() - last_paint >= _UI_INTERVAL_S or all(r.done for r in latest):
            last_paint = time.monotonic()
            yield list(latest)


def passages_markdown(passages: list[dict[str, Any]] | None) -> str:
    """The retrieved passages as a numbered Markdown list (what the RAG answer may cite as [n])."""
    if not passages:
        return ""
    lines = ["**Cited passages**"]
    for i, p in enumerate(passages, 1):
        snippet = " ".join(p["text"].split())
        snippet = snippet if len(snippet) <= 240 else snippet[:240] + "..."
        lines.append(f"{i}. `{p['source']}` #{p['chunk']} · score {p['score']:.3f}: {snippet}")
    return "\n".join(lines)


def versions(listing: list[dict[str, Any]]) -> dict[str, str]:
    """Adapter id -> its current version, from a /v1/models listing (servers without versions: empty)."""
    return {m["id"]: str(m["version"]) for m in listing if m.get("parent") and m.get("version") is not None}
