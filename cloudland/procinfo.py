"""What the kernel says about a process: memory (RSS and PSS) and whether it lives."""

from __future__ import annotations

import os
import socket

HOSTNAME = socket.gethostname()


def _netns() -> str:
    try:
        return os.readlink("/proc/self/ns/net")
    except OSError:
        return ""


NETNS = _netns()  # "net:[4026531840]": which network namespace, so which emulated host, a rank is in


def memory_kib(pid: int | str = "self") -> tuple[int, int]:
    """(RSS, PSS) in KiB from /proc/PID/smaps_rollup; (0, 0) if the process is gone."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return rss, pss


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def start_time(pid: int) -> int:
    """When ``pid`` started, in clock ticks since boot; 0 if it is gone or a zombie.

    With the pid, it names one process: a pid alone may be another process's by the time it
    is used (pid_max is 32768 here and CI makes thousands of processes), and a signal sent to
    a recycled pid hits a stranger (issue 15)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0
    return 0 if fields[0] == "Z" else int(fields[19])  # field 22 of stat: starttime


def same_process(pid: int, started: int) -> bool:
    """True while the process that had ``pid`` when ``start_time`` gave ``started`` still lives."""
    return bool(pid) and bool(started) and start_time(pid) == started


def kill_if_same(pid: int, started: int, sig: int) -> bool:
    """Send ``sig`` to ``pid`` only if it is still the process that started at ``started``."""
    if not same_process(pid, started):
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def argv_of(pid: int) -> list[str]:
    """The command line of ``pid`` ([] if it is gone or not ours to read)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace").rstrip("\0").split("\0")
    except OSError:
        return []


def local_host_agent(state_dir: str | os.PathLike[str]) -> tuple[int, list[str]]:
    """The pid and command line of the host agent whose pid file is in ``state_dir`` (the
    all-in-one cloud's, which the root starts) if it still runs; (0, []) otherwise."""
    try:
        with open(os.path.join(state_dir, f"hostd-{HOSTNAME}.pid"), encoding="ascii") as f:
            pid = int(f.read())
    except (OSError, ValueError):
        return 0, []
    argv = argv_of(pid)
    if "cloudland_launcher.hostd" not in argv or not alive(pid):
        return 0, []
    return pid, argv


def now_ms() -> int:
    import time

    return int(time.time() * 1000)


def pid() -> int:
    return os.getpid()
