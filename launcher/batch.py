"""Batching of replies on their way up (proto/README.md §3).

A rank holds replies until every job they belong to has nothing left pending
below it, or until the oldest has waited ``linger`` seconds, or the batch is
large; then it sends them up as one ReplyBatch. A broadcast thus climbs one
message per relay, while a slow hypervisor delays the others by at most
``linger``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from cloudland_proto.v1 import envelope_pb2 as pb

MAX_BATCH = 20_000  # replies; bounds one message at a few hundred KiB


class ReplyBuffer:
    def __init__(self, linger: float) -> None:
        self.linger = linger
        self._replies: list[pb.Reply] = []
        self._jobs: set[str] = set()
        self._oldest = 0.0
        self.batches_sent = 0
        self.replies_sent = 0

    def __len__(self) -> int:
        return len(self._replies)

    def add(self, replies: Iterable[pb.Reply]) -> None:
        for reply in replies:
            if not self._replies:
                self._oldest = time.monotonic()
            self._replies.append(reply)
            self._jobs.add(reply.job_id)

    def due(self, pending: Callable[[str], int]) -> bool:
        """True when the buffer should go up now; ``pending(job)`` counts replies still expected."""
        if not self._replies:
            return False
        if len(self._replies) >= MAX_BATCH or time.monotonic() - self._oldest >= self.linger:
            return True
        return all(pending(job) == 0 for job in self._jobs)

    def take(self) -> pb.ReplyBatch:
        batch = pb.ReplyBatch()
        batch.replies.extend(self._replies)
        self.batches_sent += 1
        self.replies_sent += len(self._replies)
        self._replies = []
        self._jobs = set()
        return batch
