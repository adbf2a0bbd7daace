"""The restart rule (cloudland/restarts.py) and ``cloudland up``'s supervision of one part (cli/supervise.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cloudland.restarts import Restarts
from cloudland_cli.supervise import RESTART_MIN_S, Supervised


@pytest.mark.parametrize(("code", "up_s", "delays"), [
    (1, 2.0, [0.2, 0.4, 0.8, 1.0, 1.0]),            # crashing by itself, soon after each start: backs off
    (-signal.SIGKILL, 2.0, [0.1, 0.1, 0.1, 0.1, 0.1]),  # killed: not a crash loop, every time at once
    (signal.SIGKILL, 2.0, [0.1, 0.1, 0.1, 0.1, 0.1]),   # ... also as mpiexec reports it
    (-signal.SIGTERM, 2.0, [0.1, 0.1, 0.1, 0.1, 0.1]),
    (1, 60.0, [0.1, 0.1, 0.1, 0.1, 0.1]),           # ran long enough: starts again from the minimum
])
def test_restart_delays(code: int, up_s: float, delays: list[float]) -> None:
    rule = Restarts(0.1, 1.0, stable_s=30.0)
    assert [rule.after_exit(code, up_s) for _ in delays] == delays


def test_a_stable_run_resets_the_backoff() -> None:
    rule = Restarts(0.1, 10.0)
    for _ in range(4):
        rule.after_exit(1, 1.0)
    assert rule.delay == 1.6
    assert rule.after_exit(1, 31.0) == 0.1


def child(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code])


def run_until(part: Supervised, lines: list[str], count: int, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while len(lines) < count and time.monotonic() < end:
        line = part.check(time.monotonic())
        if line:
            lines.append(line)
        time.sleep(0.02)
    assert len(lines) >= count, lines


def test_a_killed_part_is_started_again_at_once_with_its_pid_written(tmp_path: Path) -> None:
    part = Supervised("the sleeper", lambda: child("import time; time.sleep(60)"), tmp_path / "s.pid",
                      tmp_path / "s.out")
    first = part.launch()
    assert (tmp_path / "s.pid").read_text() == f"{first.pid}\n"
    assert (tmp_path / "s.pid").stat().st_mode & 0o777 == 0o600
    first.kill()
    lines: list[str] = []
    run_until(part, lines, 2)
    try:
        assert lines[0].startswith(f"the sleeper (pid {first.pid}) exited with code -9")
        assert f"starting it again in {RESTART_MIN_S:.1f} s" in lines[0] and "s.out" in lines[0]
        assert part.proc is not None and part.proc.pid != first.pid and part.proc.poll() is None
        assert lines[1] == f"started the sleeper again (pid {part.proc.pid}, restart 1)"
        assert (tmp_path / "s.pid").read_text() == f"{part.proc.pid}\n"
    finally:
        assert part.proc is not None
        part.proc.kill()
        part.proc.wait()


def test_a_part_that_keeps_failing_waits_longer_each_time(tmp_path: Path) -> None:
    part = Supervised("the crasher", lambda: child("raise SystemExit(3)"), tmp_path / "c.pid", tmp_path / "c.out")
    part.launch()
    lines: list[str] = []
    run_until(part, lines, 6)
    exits = [line for line in lines if "exited with code 3" in line]
    assert [line.split("again in ")[1].split(" s")[0] for line in exits[:3]] == ["0.2", "0.4", "0.8"]
    assert part.restarts >= 2


def test_a_host_agent_left_by_a_dead_root_is_found_and_stopped(tmp_path: Path) -> None:
    from cloudland import procinfo
    from cloudland_cli.start import stop_local_agent

    # Stands in for the host agent by its command line, which is what is looked at.
    agent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-m", "cloudland_launcher.hostd",
                              "--root", "127.0.0.1:1"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pid_file = tmp_path / f"hostd-{procinfo.HOSTNAME}.pid"
        pid_file.write_text(f"{other.pid}\n")
        assert procinfo.local_host_agent(tmp_path) == (0, []), "a pid that is not a host agent's is no agent"
        stop_local_agent(tmp_path)
        assert other.poll() is None
        pid_file.write_text(f"{agent.pid}\n")
        # Popen returns once the child forked, maybe before its exec: its command line is ours until then.
        deadline = time.monotonic() + 30
        while "cloudland_launcher.hostd" not in procinfo.argv_of(agent.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        pid, argv = procinfo.local_host_agent(tmp_path)
        assert pid == agent.pid and argv[argv.index("--root") + 1] == "127.0.0.1:1"
        stop_local_agent(tmp_path)
        assert agent.wait(timeout=10) == -signal.SIGTERM
    finally:
        for proc in (agent, other):
            proc.kill()
            proc.wait()
