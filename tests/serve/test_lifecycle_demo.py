"""`loradock demo` keeps its children running: one that dies is started again, one that keeps dying is fatal."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from loradock.core.procs import offline_env
from loradock.demo import ChildFailed, Children


def test_a_child_that_dies_is_restarted_and_one_that_keeps_dying_ends_the_demo():
    children = Children(max_restarts=2, window_s=600)
    child = children.start("server", [sys.executable, "-c", "import time; time.sleep(600)"], offline_env())
    try:
        assert children.check() == []
        for _ in range(2):
            first = child.proc
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            assert children.check() == ["server"]
            assert child.proc is not first and child.proc.poll() is None
        child.proc.send_signal(signal.SIGKILL)
        child.proc.wait(10)
        with pytest.raises(ChildFailed, match=r"the server exited with code -9 3 times"):
            children.check()
    finally:
        children.stop(timeout=5)
    assert child.proc.poll() is not None


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_the_demo_stops_on_sigint_and_sigterm_even_when_started_in_the_background(sig):
    # a shell starts background jobs with SIGINT ignored; `kill -INT` must still stop the demo
    code = ("import os, signal, time\n"
            "from loradock.demo import install_stop_signals\n"
            "install_stop_signals()\n"
            "try:\n"
            f"    os.kill(os.getpid(), {int(sig)}); time.sleep(30)\n"
            "except KeyboardInterrupt:\n"
            "    print('stopping')\n")
    # started the way a shell starts a background job: SIGINT ignored, which survives exec (no preexec_fn: this
    # process has threads)
    launcher = ("import os, signal, sys\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                "os.execv(sys.executable, [sys.executable, '-c', sys.argv[1]])\n")
    out = subprocess.run([sys.executable, "-c", launcher, code], capture_output=True, text=True, timeout=60,
                         env=offline_env())
    assert out.stdout.strip() == "stopping", out.stderr
