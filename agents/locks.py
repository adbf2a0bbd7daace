"""One lock per key: the agent's one way to serialise work on one thing while others proceed.

A VM's verbs queue up on its name (compute/driver.py), a base image's download and adoption on
its file name, a capture on its destination (images/cache.py); different keys never wait for
each other (docs/architecture.md, agents).
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterator
from contextlib import contextmanager


class KeyLocks:
    """One lock per key: the callers of one key queue up, different keys do not wait."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        # Locks are kept once made: dropping one while a thread waits on it would let a
        # newcomer take a fresh lock and run beside the waiter.
        self._locks: dict[Hashable, threading.Lock] = {}

    @contextmanager
    def hold(self, key: Hashable) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            yield
