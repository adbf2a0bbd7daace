"""A keyed work queue, level-triggered, as Kubernetes controllers use (client-go's workqueue).

A key names one thing to converge (``("instance", 42)``), never what happened to it: ``sync(key)``
reads desired and observed state afresh each time. So adding a key twice before it is taken
runs it once; a key added while it is being synced runs once more afterwards (the change may
have come too late for the running sync), never twice at once. A sync that fails, or that sent
a command and wants to look again, puts its key back with per-key exponential backoff
(``retry``); one that converged calls ``forget`` to reset the backoff.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Hashable, Iterable

Key = Hashable


class WorkQueue:
    """Keys to sync, each at most once in the queue and at most once in progress."""

    def __init__(self, base_delay_s: float = 0.5, max_delay_s: float = 60.0) -> None:
        self._ready: list[Key] = []
        self._queued: set[Key] = set()
        self._active: set[Key] = set()
        self._dirty: set[Key] = set()            # added while active: queued again when done
        self._delayed: list[tuple[float, int, Key]] = []
        self._tries: dict[Key, int] = {}
        self._seq = 0
        self._base, self._max = base_delay_s, max_delay_s
        self._cond = threading.Condition()
        self._closed = False

    def add(self, key: Key) -> None:
        self.add_all([key])

    def add_all(self, keys: Iterable[Key]) -> None:
        with self._cond:
            for key in keys:
                if key in self._active:
                    self._dirty.add(key)
                elif key not in self._queued:
                    self._queued.add(key)
                    self._ready.append(key)
            self._cond.notify_all()

    def add_after(self, key: Key, delay_s: float) -> None:
        with self._cond:
            self._seq += 1
            heapq.heappush(self._delayed, (time.monotonic() + delay_s, self._seq, key))
            self._cond.notify_all()

    def retry(self, key: Key) -> float:
        """Put ``key`` back after its next backoff delay (doubling per try); the delay."""
        with self._cond:  # (an RLock: add_after takes it again)
            tries = self._tries.get(key, 0)
            self._tries[key] = tries + 1
            delay = min(self._base * 2 ** tries, self._max)
            self.add_after(key, delay)
        return delay

    def forget(self, key: Key) -> None:
        """``key`` converged: its next retry starts from the base delay again."""
        with self._cond:
            self._tries.pop(key, None)

    def take(self, limit: int, timeout: float) -> list[Key]:
        """Up to ``limit`` ready keys, waiting at most ``timeout`` for the first; each is active until
        ``done``."""
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                self._promote()
                if self._ready or self._closed:
                    break
                wait = end - time.monotonic()
                if self._delayed:
                    wait = min(wait, self._delayed[0][0] - time.monotonic())
                if wait <= 0 and time.monotonic() >= end:
                    return []
                self._cond.wait(max(wait, 0.001))
            keys, self._ready = self._ready[:limit], self._ready[limit:]
            for key in keys:
                self._queued.discard(key)
                self._active.add(key)
            return keys

    def done(self, keys: Iterable[Key]) -> None:
        with self._cond:
            again = []
            for key in keys:
                self._active.discard(key)
                if key in self._dirty:
                    self._dirty.discard(key)
                    again.append(key)
            for key in again:
                if key not in self._queued:
                    self._queued.add(key)
                    self._ready.append(key)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._ready) + len(self._delayed)

    def _promote(self) -> None:
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, key = heapq.heappop(self._delayed)
            if key in self._active:
                self._dirty.add(key)
            elif key not in self._queued:
                self._queued.add(key)
                self._ready.append(key)
