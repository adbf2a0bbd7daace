"""A pid and its start time name one process: a signal by pid reaches only that process (issue 15)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from cloudland import procinfo


def test_start_time_names_the_process_and_a_different_start_is_refused() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = procinfo.start_time(child.pid)
        assert started > 0 and procinfo.same_process(child.pid, started)
        # Another start time under the same pid: what a recycled pid looks like. Nothing is sent.
        assert not procinfo.kill_if_same(child.pid, started + 1, signal.SIGKILL)
        assert child.poll() is None
        assert procinfo.kill_if_same(child.pid, started, signal.SIGKILL)
        assert child.wait(10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    # Reaped: the pid names nothing (or another process), and no signal is sent to it.
    assert not procinfo.same_process(child.pid, started)
    assert not procinfo.kill_if_same(child.pid, started, signal.SIGKILL)


def test_a_zombie_or_no_pid_is_no_process() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = procinfo.start_time(child.pid)
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie
    assert procinfo.start_time(child.pid) == 0
    assert not procinfo.same_process(child.pid, started)
    child.wait()
    assert not procinfo.same_process(0, 0) and not procinfo.kill_if_same(0, 0, signal.SIGKILL)
