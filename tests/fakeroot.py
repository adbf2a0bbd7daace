"""A recording fake of the root's client (cloudland.client.RootClient), for unit tests of the
layers above the tree: the job engine and the reconciler.

It records every command it is given and answers from data: every present hypervisor answers
OK with the result message set for the operation (``answers`` per hypervisor, else ``results``;
else none, the compact form), unless a failure was queued with ``fail_next`` (one call) or a
hypervisor was marked ``unavailable`` (until ``restore``). Tests seed state, run one pass, and
compare ``commands`` with what they expect.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from google.protobuf.message import Message

from cloudland import operations
from cloudland.errors import CloudLandError
from cloudland_proto.v1 import envelope_pb2 as pb

STATUS = {"ok": pb.OK, "failed": pb.FAILED, "timeout": pb.TIMEOUT, "unavailable": pb.UNAVAILABLE,
          "invalid": pb.INVALID_ARGUMENT}


@dataclass(frozen=True)
class Sent:
    """One command as the fake received it; ``targets``: an id, a sorted tuple of ids, or None (all)."""

    job_id: str
    operation: str
    targets: int | tuple[int, ...] | None
    request: Message | None = field(compare=False, hash=False)


@dataclass
class _Failure:
    status: int
    error: str
    hypervisors: set[int] | None  # None: every target
    raises: CloudLandError | None = None


class FakeRoot:
    """Stands in for RootClient: ``run`` records and answers; ``fail_next`` queues a failure."""

    def __init__(self, hypervisors: Iterable[int] = range(1, 5)) -> None:
        self.hypervisors = set(hypervisors)      # present in the tree
        self.unreachable: set[int] = set()       # answer UNAVAILABLE until restored
        self.commands: list[Sent] = []
        self.results: dict[str, Message] = {}  # operation -> the result message an OK reply carries
        self.answers: dict[tuple[str, int], Message] = {}  # (operation, hypervisor) -> its own result, over results
        self._failures: dict[str, deque[_Failure]] = {}
        self.closed = False

    # -- what tests set -----------------------------------------------------------------

    def fail_next(self, operation: str, status: str = "failed", error: str = "injected failure", *,
                  hypervisors: Iterable[int] | None = None) -> None:
        """The next call of ``operation`` gets ``status`` from ``hypervisors`` (default: every target)."""
        self._failures.setdefault(operation, deque()).append(
            _Failure(STATUS[status], error, set(hypervisors) if hypervisors is not None else None))

    def raise_next(self, operation: str, error: CloudLandError) -> None:
        """The next call of ``operation`` raises ``error`` (the root unreachable, say)."""
        self._failures.setdefault(operation, deque()).append(_Failure(0, "", None, error))

    def unavailable(self, *hypervisors: int) -> None:
        self.unreachable.update(hypervisors)

    def restore(self, *hypervisors: int) -> None:
        self.unreachable.difference_update(hypervisors)

    def sent(self, operation: str | None = None) -> list[Sent]:
        return [c for c in self.commands if operation is None or c.operation == operation]

    # -- what the client does -------------------------------------------------------------

    def run(self, operation: str, targets: int | Iterable[int] | None = None, *, request: Message | None = None,
            timeout: float = 30.0, job_id: str = "") -> list[pb.Reply]:
        if request is not None:
            operations.pack(operation, request)  # what RootClient checks: a dict or another type is a TypeError
        shown = targets if isinstance(targets, int) or targets is None else tuple(sorted(targets))
        self.commands.append(Sent(job_id, operation, shown, request))
        queued = self._failures.get(operation)
        failure = queued.popleft() if queued else None
        if failure is not None and failure.raises is not None:
            raise failure.raises
        wanted = ({targets} if isinstance(targets, int) else
                  set(targets) if targets is not None else set(self.hypervisors))
        replies = []
        for hv in sorted(wanted):
            if hv not in self.hypervisors:
                replies.append(pb.Reply(job_id=job_id, hypervisor=hv, status=pb.UNKNOWN_HYPERVISOR,
                                        error=f"hypervisor {hv} is not in the tree"))
            elif hv in self.unreachable:
                replies.append(pb.Reply(job_id=job_id, hypervisor=hv, status=pb.UNAVAILABLE,
                                        error=f"subtree of hypervisor {hv} lost"))
            elif failure is not None and (failure.hypervisors is None or hv in failure.hypervisors):
                replies.append(pb.Reply(job_id=job_id, hypervisor=hv, status=failure.status, error=failure.error))
            else:
                reply = pb.Reply(job_id=job_id, hypervisor=hv, status=pb.OK)
                result = self.answers.get((operation, hv), self.results.get(operation))
                if result is not None and result.ByteSize():
                    reply.result.CopyFrom(operations.pack_result(operation, result))
                replies.append(reply)
        return replies

    def close(self) -> None:
        self.closed = True
