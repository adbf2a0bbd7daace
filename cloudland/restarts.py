"""When to start a dead process again: the one rule of every supervisor in CloudLand.

A host agent restarts its ranks by it (launcher/hostd.py), and ``cloudland up`` its root and
its API (cli/supervise.py, issue 15). A process that was killed (SIGKILL or SIGTERM: an
operator, the OOM killer, a chaos test) did not fail on its own, so it comes back after the
minimum delay however often that happens; one that keeps dying by itself soon after its
start waits twice as long each time, up to a ceiling, so a crash loop does not eat the
machine; one that ran for ``stable_s`` starts again from the minimum.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

# A child's exit code: a signal's negative number (Popen), or, for a process under mpiexec,
# the signal's number (mpiexec passes on how its rank ended).
KILLED = frozenset({signal.SIGKILL, signal.SIGTERM, -signal.SIGKILL, -signal.SIGTERM})


@dataclass
class Restarts:
    """The delay before the next start of one supervised process."""

    minimum_s: float
    maximum_s: float
    stable_s: float = 30.0
    delay: float = 0.0

    def __post_init__(self) -> None:
        self.delay = self.delay or self.minimum_s

    def after_exit(self, code: int | None, up_s: float) -> float:
        """The process exited with ``code`` after ``up_s`` seconds: how long to wait now."""
        crash_loop = up_s <= self.stable_s and code not in KILLED
        self.delay = min(self.delay * 2, self.maximum_s) if crash_loop else self.minimum_s
        return self.delay

    def after_failed_start(self) -> float:
        """It could not even be started (no executable, a full disk): back off."""
        self.delay = min(self.delay * 2, self.maximum_s)
        return self.delay
