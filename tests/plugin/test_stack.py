"""Room on CPython's frame stack for the engine's busy loop (plugin/stack.py): a call whose frame does not fit
the current chunk maps a fresh chunk every time (seen as new page faults per call); from inside
``with_room`` the same calls reuse one chunk."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from types import ModuleType

import pytest

from loradock.plugin import register
from loradock.plugin.stack import with_room

# In a fresh interpreter: page faults of 2,000 calls to a function whose frame (~20 KB) is larger than a
# CPython data-stack chunk (16 KiB), called plainly and from inside with_room.
_PROBE = textwrap.dedent("""
    import json, resource
    from loradock.plugin.stack import _trampoline, with_room

    big = _trampoline(2_500)

    def calls(n=2_000):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(n):
            big(len, ((),), {})
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    calls(10)
    print(json.dumps({"plain": calls(), "roomy": with_room(calls)()}))
""")


@pytest.mark.skipif(sys.implementation.name != "cpython" or sys.version_info < (3, 11),
                    reason="data-stack chunks are CPython 3.11+")
def test_with_room_keeps_one_chunk_for_the_call_tree() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=60)
    faults = json.loads(out.stdout)
    assert faults["plain"] >= 2_000, faults  # a fresh chunk (and its first-touch faults) per call
    assert faults["roomy"] < 100, faults


def test_with_room_passes_arguments_results_and_errors() -> None:
    def f(a: int, *, b: int = 1) -> int:
        if a < 0:
            raise ValueError("negative")
        return a + b

    roomy = with_room(f)
    assert roomy(2, b=3) == 5 and roomy.__name__ == "f"
    with pytest.raises(ValueError, match="negative"):
        roomy(-1)


def test_busy_loops_are_wrapped_once_where_defined() -> None:
    class Proc:
        def run_busy_loop(self) -> str:
            return "ran"

    class DPProc(Proc):
        def run_busy_loop(self) -> str:
            return "dp ran"

    class Inherits(Proc):
        pass

    module = ModuleType("core")
    module.Proc, module.DPProc, module.Inherits, module.NOT_A_CLASS = Proc, DPProc, Inherits, 3
    register.patch_busy_loops(module)
    first = Proc.run_busy_loop
    register.patch_busy_loops(module)
    assert Proc.run_busy_loop is first and "run_busy_loop" not in vars(Inherits)
    assert Proc().run_busy_loop() == "ran" and DPProc().run_busy_loop() == "dp ran"
    assert getattr(vars(DPProc)["run_busy_loop"], register._MARKS, False)


def test_vllm_engine_core_loops_are_wrapped() -> None:
    """The plugin (loaded by this test session's vLLM import) wrapped vLLM's engine-core busy loops."""
    from vllm.v1.engine import core

    register.register()
    loops = [cls for cls in vars(core).values() if isinstance(cls, type) and "run_busy_loop" in vars(cls)]
    assert loops and all(getattr(vars(cls)["run_busy_loop"], register._MARKS, False) for cls in loops)
