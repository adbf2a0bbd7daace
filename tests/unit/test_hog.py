"""The CPU hog of the healing tests (tests/hog.py): its spinners spin beside a test, at the default
nice level, and are gone after a module whose test failed; the run's log says the load they made."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cloudland import procinfo

FAILING = '''
import json, os

from cloudland import procinfo


def test_beside_the_hog(cpu_hog):
    with open(os.environ["HOG_REPORT"], "w") as report:
        json.dump({pid: [procinfo.start_time(pid), os.getpriority(os.PRIO_PROCESS, pid)]
                   for pid in cpu_hog.spinning()}, report)
    assert False, "this test fails on purpose"
'''

def test_spinners_run_beside_a_failing_test_and_are_gone_after_it(tmp_path: Path) -> None:
    (tmp_path / "test_fails_beside_the_hog.py").write_text(FAILING)
    report = tmp_path / "spinners.json"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.hog",
                           "--rootdir", str(tmp_path), str(tmp_path)], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, HOG_REPORT=str(report)), cwd=Path(__file__).parents[2])
    assert done.returncode == 1 and "this test fails on purpose" in done.stdout, done.stdout + done.stderr
    spinners = {int(pid): value for pid, value in json.loads(report.read_text()).items()}
    assert len(spinners) == 2 * (os.cpu_count() or 1)
    assert {nice for _, nice in spinners.values()} == {0}, spinners
    assert not [pid for pid, (started, _) in spinners.items() if procinfo.same_process(pid, started)]
    assert f"cpu hog: {len(spinners)} spinning processes on {os.cpu_count()} cores; 1-min load average" in done.stdout


def test_spinners_stop_by_themselves_when_their_pytest_is_killed() -> None:
    """A run killed with SIGKILL tears nothing down: the machine must not stay loaded."""
    import signal

    from cloudland_launcher.harness import wait_for

    parent = subprocess.Popen([sys.executable, "-c", "import sys, time; from tests.hog import CpuHog; "
                               "hog = CpuHog(2).start(); print(*hog.spinners, flush=True); time.sleep(300)"],
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
    assert parent.stdout is not None
    pids = [int(pid) for pid in parent.stdout.readline().split()]
    spinners = {pid: procinfo.start_time(pid) for pid in pids}
    assert len(spinners) == 2 and all(spinners.values())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    wait_for(lambda: not [pid for pid, started in spinners.items() if procinfo.same_process(pid, started)], 30,
             "the orphaned spinners to stop")
