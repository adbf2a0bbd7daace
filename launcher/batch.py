"""Batching of replies on their way up (proto/README.md §3).

A rank holds replies until every job they belong to has nothing left pending
below it, or until the oldest has waited ``linger`` seconds, or the batch is
large; then it sends them up as one ReplyBatch. A broadcast thus climbs one
message per relay, while a slow hypervisor delays the others by at most
``linger``. OK replies without payload travel in the compact ``ok`` form: per
job a packed list of hypervisor ids, merged and forwarded without touching
each reply.

Every batch also says what its jobs cost in tree messages (``ReplyBatch.messages``, §3 "Message
counts"): the copies of each job's command sent below this rank and the batches its replies
climbed in, reported by the children, plus this batch itself. The root adds them up per job.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from cloudland_proto.v1 import envelope_pb2 as pb

MAX_BATCH = 20_000  # replies; bounds one message at a few hundred KiB


def batch_of(replies: Iterable[pb.Reply]) -> pb.ReplyBatch:
    """A ReplyBatch holding ``replies`` in full form."""
    batch = pb.ReplyBatch()
    batch.replies.extend(replies)
    return batch


def size(batch: pb.ReplyBatch) -> int:
    """How many hypervisors' replies ``batch`` carries."""
    return len(batch.replies) + sum(len(entry.hypervisors) for entry in batch.ok)


class ReplyBuffer:
    def __init__(self, linger: float) -> None:
        self.linger = linger
        self._replies: list[pb.Reply] = []
        self._ok: dict[str, list[int]] = {}
        self._messages: dict[str, int] = {}  # job id -> messages spent below, not yet reported
        self._jobs: set[str] = set()  # the jobs of the replies held: ``due`` asks each once, not per reply
        self._count = 0
        self._oldest = 0.0
        self.batches_sent = 0
        self.replies_sent = 0

    def __len__(self) -> int:
        return self._count

    def _touch(self, n: int) -> None:
        if not self._count:
            self._oldest = time.monotonic()
        self._count += n

    def add(self, batch: pb.ReplyBatch) -> None:
        """Buffer every reply of ``batch`` (both forms) and what its jobs cost below."""
        for entry in batch.messages:
            self._messages[entry.job_id] = self._messages.get(entry.job_id, 0) + entry.count
        if batch.replies:
            self._touch(len(batch.replies))
            self._replies.extend(batch.replies)
            self._jobs.update(r.job_id for r in batch.replies)
        for entry in batch.ok:
            self._touch(len(entry.hypervisors))
            self._ok.setdefault(entry.job_id, []).extend(entry.hypervisors)

    def add_reply(self, reply: pb.Reply) -> None:
        self._touch(1)
        self._replies.append(reply)
        self._jobs.add(reply.job_id)

    def add_ok(self, job_id: str, hypervisor: int) -> None:
        self._touch(1)
        self._ok.setdefault(job_id, []).append(hypervisor)

    def due(self, pending: Callable[[str], int]) -> bool:
        """True when the buffer should go up now; ``pending(job)`` counts replies still expected."""
        if not self._count:
            return False
        if self._count >= MAX_BATCH or time.monotonic() - self._oldest >= self.linger:
            return True
        return all(pending(job) == 0 for job in self._ok) and all(pending(job) == 0 for job in self._jobs)

    def take(self) -> pb.ReplyBatch:
        batch = batch_of(self._replies)
        for job_id, hypervisors in self._ok.items():
            batch.ok.add(job_id=job_id, hypervisors=hypervisors)
        costs = self._messages
        for job_id in self._jobs | self._ok.keys():
            costs[job_id] = costs.get(job_id, 0) + 1  # this batch carries the job's replies
        batch.messages.extend(pb.JobMessages(job_id=job_id, count=n) for job_id, n in costs.items())
        self.batches_sent += 1
        self.replies_sent += self._count
        self._replies, self._ok, self._messages, self._jobs, self._count = [], {}, {}, set(), 0
        return batch
