"""``cloudland up`` keeps its two parts alive: the tree's root and the API (issue 15).

When one dies, it is started again with the same settings, the other left running:
- a new root listens where the old one did (its rendezvous address is kept in the state
  directory), takes over the local host agent the old one started, whose ranks link to it
  again and report their whole inventory; VMs, bridges and rules are not touched. The API's
  client reconnects by itself and jobs in flight are sent again under their ids;
- a new API plans again every job that was not terminal (api/jobs/engine.py); the tree never
  noticed.
When each part restarts follows ``cloudland/restarts.py``: killed, at once; crashing on its
own, with a growing delay. Each start writes the part's pid to ``<state>/<name>.pid``, so an
operator (or a test) can tell which process is which.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cloudland.restarts import Restarts

RESTART_MIN_S = 0.1
RESTART_MAX_S = 30.0


@dataclass
class Supervised:
    """One child process that is started again whenever it dies."""

    name: str                                        # "the tree's root", "the API"
    start: Callable[[], subprocess.Popen[bytes]]
    pid_file: Path
    log_file: Path                                   # named when it dies
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restart_at: float | None = None                  # set while it is dead
    restarts: int = 0
    restart: Restarts = field(default_factory=lambda: Restarts(RESTART_MIN_S, RESTART_MAX_S))

    def launch(self) -> subprocess.Popen[bytes]:
        self.proc = self.start()
        self.started = time.monotonic()
        self.pid_file.write_text(f"{self.proc.pid}\n")
        self.pid_file.chmod(0o600)  # private state, as all of the state directory (issue 15)
        return self.proc

    def check(self, now: float) -> str:
        """Start it again if it died and its delay is over; a line for the operator ("" if none)."""
        assert self.proc is not None
        if self.restart_at is None:
            code = self.proc.poll()
            if code is None:
                return ""
            up = now - self.started
            delay = self.restart.after_exit(code, up)
            self.restart_at = now + delay
            return (f"{self.name} (pid {self.proc.pid}) exited with code {code} after {up:.0f} s; "
                    f"starting it again in {delay:.1f} s (see {self.log_file})")
        if now < self.restart_at:
            return ""
        self.restart_at = None
        try:
            self.launch()
        except OSError as exc:
            self.restart_at = now + self.restart.after_failed_start()
            return f"{self.name} could not be started: {exc}; trying again in {self.restart.delay:.1f} s"
        self.restarts += 1
        return f"started {self.name} again (pid {self.proc.pid}, restart {self.restarts})"
