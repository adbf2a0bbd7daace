"""The reconciler's loop: keys from the observed-state stream, ``sync`` per key, jobs to the engine.

Level-triggered (docs/architecture.md "Reconciler"): the stream only says *which* hypervisors
changed; each sync reads desired state from the database and observed state as it is now, and
makes jobs until the two agree. One keyed work queue (queue.py) holds what to look at; retries
with backoff happen there, in one place. Every kind of resource plugs its own sync in
(``syncs``): VMs are converged per hypervisor (vm.py), and so are networks (net.py: an agent
that started again gets its whole state), and so are volumes' attachments (volume.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from cloudland_api.reconcile import net, vm, volume
from cloudland_api.reconcile.queue import WorkQueue

log = logging.getLogger(__name__)

HYPERVISOR = "hypervisor"
BATCH = 200          # keys per sync transaction
RESYNC_S = 60.0      # everything looked at again this often, whatever the stream said

Observed = Callable[[Iterable[int]], Mapping[int, Mapping[str, vm.Domain]]]
Submit = Callable[[Iterable[str]], None]


class Converger:
    """Runs the syncs on one thread; ``changed(hypervisors)`` is what the observer calls."""

    def __init__(self, write_sessions: sessionmaker[Session], observed: Observed, submit: Submit,
                 *, resync_s: float = RESYNC_S, up: Callable[[], Iterable[int]] | None = None) -> None:
        self._sessions = write_sessions
        self._observed = observed  # hypervisor ids -> those up and reported, with their domains
        self._submit = submit
        self._up = up              # every hypervisor up now (for the periodic resync)
        self._resync_s = resync_s
        self.queue = WorkQueue()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.passes = 0
        self.unmanaged: dict[tuple[int, str], None] = {}  # reported once each
        self.foreign_disks: dict[tuple[int, str, str], None] = {}  # likewise

    def changed(self, hypervisors: Iterable[int]) -> None:
        self.queue.add_all((HYPERVISOR, hv) for hv in hypervisors)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="reconcile", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self.queue.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        resync = threading.Event()
        timer = _Every(self._resync_s, resync)
        timer.start()
        try:
            while not self._stopping.is_set():
                if resync.is_set() and self._up is not None:
                    resync.clear()
                    self.changed(self._up())
                keys = self.queue.take(BATCH, 0.5)
                if keys:
                    self.sync(keys)
        finally:
            timer.cancel()

    def sync(self, keys: list[Any]) -> None:
        """One pass over ``keys`` (taken from the queue): converge, submit the jobs made, requeue what
        could not be judged yet with backoff."""
        hvs = sorted(key[1] for key in keys if key[0] == HYPERVISOR)
        try:
            observed = self._observed(hvs)
            with self._sessions() as session:
                verdict = vm.sync_hypervisors(session, observed)
                networks = net.sync_hypervisors(session, observed)  # agents that (re)started
                disks = volume.sync_hypervisors(session, observed)
                session.commit()
                ids = [job.id for job in verdict.jobs + networks + disks.jobs]
        except Exception:
            log.exception("event=reconcile_failed hypervisors=%d", len(hvs))
            for key in keys:
                self.queue.retry(key)
            self.queue.done(keys)
            return
        self.passes += 1
        if ids:
            self._submit(ids)
        for hv, name in verdict.unmanaged:
            if (hv, name) not in self.unmanaged:
                self.unmanaged[(hv, name)] = None
                log.warning("event=domain_unmanaged hypervisor=%d domain=%s note=no CloudLand metadata: left alone",
                            hv, name)
        for found in disks.foreign:
            if found not in self.foreign_disks:
                self.foreign_disks[found] = None
                log.warning("event=disk_unmanaged hypervisor=%d domain=%s device=%s note=attached outside CloudLand: "
                            "left alone", *found)
        for key in keys:
            if key[0] == HYPERVISOR and key[1] in verdict.again | disks.again:
                self.queue.retry(key)
            else:
                self.queue.forget(key)
        self.queue.done(keys)


class _Every(threading.Thread):
    """Sets ``event`` every ``interval_s`` until cancelled."""

    def __init__(self, interval_s: float, event: threading.Event) -> None:
        super().__init__(name="reconcile-resync", daemon=True)
        self._interval_s, self._event, self._cancelled = interval_s, event, threading.Event()

    def run(self) -> None:
        while not self._cancelled.wait(self._interval_s):
            self._event.set()

    def cancel(self) -> None:
        self._cancelled.set()
