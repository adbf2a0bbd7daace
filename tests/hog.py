"""A CPU hog for the healing tests (issue 15: "the timing bounds of the healing tests are met with
the machine loaded, not only when idle").

``cpu_hog`` (module-scoped; registered in tests/conftest.py with ``pytest_plugins``) starts
``HOG_PER_CPU`` x ``os.cpu_count()`` pure-Python processes that spin (``SPIN``) at the
default nice level, as a tenant's busy work would, so every rank of the tree competes with them
for the cores and the load average climbs well above the core count. They are stopped by pid (and
start time: a recycled pid is never hit) when the module's tests end, failed or not, and the
fixture says on the terminal how loaded the machine was: the 1-minute load average at the start,
its highest sample while the hog ran, and at the end. A module that holds healing bounds asks for
it with ``pytestmark = pytest.mark.usefixtures("cpu_hog")``, so CI runs each healing scenario
once, beside the hog.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from cloudland import procinfo

HOG_PER_CPU = 2        # spinning processes per core: the load average goes well above the core count
SAMPLE_EVERY_S = 1.0   # how often the load average is sampled while the hog runs
# Pure Python, and it ends itself should pytest die without its teardown (SIGKILL): a spinner
# whose parent is gone (reparented) stops, so a killed run cannot leave the machine loaded. The
# parent's pid comes in argv: read at the spinner's start, it could already be init's.
SPIN = ("import os, sys\nwhile os.getppid() == int(sys.argv[1]):\n"
        "    for _ in range(1_000_000):\n        pass\n")


@dataclass
class CpuHog:
    """Spinning processes, pid -> start time, and the load average they produced."""

    count: int
    spinners: dict[int, int] = field(default_factory=dict)
    load_before: float = 0.0
    load_peak: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _sampler: threading.Thread | None = None

    def start(self) -> CpuHog:
        self.load_before = os.getloadavg()[0]
        for _ in range(self.count):
            # Its own session: a test's killpg of its tree can never reach it, nor it a test's group.
            proc = subprocess.Popen([sys.executable, "-c", SPIN, str(os.getpid())], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            self.spinners[proc.pid] = procinfo.start_time(proc.pid)
        self._sampler = threading.Thread(target=self._sample, name="cpu-hog-load", daemon=True)
        self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            self.load_peak = max(self.load_peak, os.getloadavg()[0])

    def spinning(self) -> list[int]:
        """The hog's processes that still run (the same processes, not recycled pids)."""
        return [pid for pid, started in self.spinners.items() if procinfo.same_process(pid, started)]

    def load(self) -> float:
        """The 1-minute load average now (for a test's own report line)."""
        return os.getloadavg()[0]

    def stop(self) -> str:
        """Kill every spinner by pid, reap it, and say what load the hog produced."""
        self._stop.set()
        for pid, started in self.spinners.items():
            procinfo.kill_if_same(pid, started, signal.SIGKILL)
        for pid in self.spinners:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        left = self.spinning()
        assert not left, f"cpu hog: spinners still running after SIGKILL: {left}"
        self.load_peak = max(self.load_peak, os.getloadavg()[0])
        return (f"cpu hog: {self.count} spinning processes on {os.cpu_count()} cores; 1-min load average "
                f"{self.load_before:.1f} before, peak {self.load_peak:.1f}, {os.getloadavg()[0]:.1f} at the end")


def _hogging(request: pytest.FixtureRequest) -> Iterator[CpuHog]:
    hog = CpuHog(HOG_PER_CPU * (os.cpu_count() or 1))
    try:
        yield hog.start()
    finally:
        report = hog.stop()
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:  # not captured: CI's log says how loaded the machine was
            reporter.write_line(f"{request.node.nodeid}: {report}")
        else:
            print(report, file=sys.stderr)


@pytest.fixture(scope="module")
def cpu_hog(request: pytest.FixtureRequest) -> Iterator[CpuHog]:
    """``HOG_PER_CPU`` spinning processes per core for this module's tests (module docstring)."""
    yield from _hogging(request)


@pytest.fixture
def cpu_hog_per_test(request: pytest.FixtureRequest) -> Iterator[CpuHog]:
    """The same for one test: in a module whose other tests (a cluster's bring-up) hold no healing
    bound and need not pay for it."""
    yield from _hogging(request)
