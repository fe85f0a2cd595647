"""Room on the interpreter's frame stack for the engine's busy loop (CPython 3.11+ data-stack chunks).

CPython keeps Python frames in 16 KiB chunks and frees a chunk (``munmap``) as soon as the frame that opened it
returns. When a hot call sits at a chunk boundary, every call maps and unmaps a chunk: measured in vLLM's
engine-core process with compilation on, 5,350 ``mmap``/``munmap`` pairs of 16 KiB per second, each unmap a
TLB shoot-down IPI to the other core (in a VM an exit), which also stalls the OpenMP worker that the step's
parallel regions wait for. :func:`with_room` runs a long-lived function from a frame that is itself large, so
that CPython opens one big chunk for it and the whole step's call tree lives in its remainder.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

ROOM_SLOTS = 17_000  # locals of the trampoline: a ~136 KB frame in a 256 KiB chunk, ~120 KB left for callees


@functools.cache
def _trampoline(slots: int) -> Callable[..., Any]:
    names = " = ".join(f"_r{i}" for i in range(slots))
    source = (f"def trampoline(fn, args, kwargs):\n"
              f"    if fn is None:  # never true: the names only make the frame large\n"
              f"        {names} = None\n"
              f"    return fn(*args, **kwargs)\n")
    scope: dict[str, Any] = {}
    exec(compile(source, "<loradock.plugin.stack>", "exec"), scope)  # noqa: S102 - fixed, generated source
    return scope["trampoline"]


def with_room(fn: Callable[..., Any], slots: int = ROOM_SLOTS) -> Callable[..., Any]:
    """``fn`` called from a frame of ``slots`` locals (see the module docstring)."""
    trampoline = _trampoline(slots)

    @functools.wraps(fn)
    def roomy(*args: Any, **kwargs: Any) -> Any:
        return trampoline(fn, args, kwargs)

    return roomy
