"""What a kind of job plugs into the engine: how to plan it and how its outcome settles.

The engine (engine.py) knows nothing of VMs or images. For each job it asks the job's kind:

    plan(ctx, jobs)      what to send, to whom (one hypervisor, a set, or all), or an
                         outcome decided without the tree (no room, a host that is gone)
    settle(session, done) how each outcome changes the subject's desired and observed state

and it does the rest: one job at a time per subject, dispatch through the tree, retries of
unreachable targets with backoff, timeouts, the job's terminal state, recovery after a
restart. A new kind is one module that subclasses ``Kind`` and calls ``register``; the
engine needs no edit (docs/architecture.md "Jobs").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from google.protobuf.message import Message
from sqlalchemy.orm import Session

from cloudland import operations
from cloudland_api.models import Job

if TYPE_CHECKING:
    from cloudland_api.jobs.guest import GuestSource

ALL: None = None  # Send.targets for a broadcast


@dataclass(frozen=True)
class Result:
    """One hypervisor's answer to a job: ``ok``, ``failed``, ``timeout`` or ``unavailable``."""

    status: str
    error: str = ""
    result: Message | None = None  # the operation's result message when ok (cloudland/operations.py)


@dataclass(frozen=True)
class Outcome:
    """How a job ended: ``ok``, ``failed`` or ``timeout``, with a reason when not ok.

    ``result``: a unicast job's one result message (None unless ok). ``results``: every
    target's answer (multicast and broadcast jobs; a unicast job's one target too).
    """

    job_id: str
    kind: str
    reason: str | None = None
    result: Message | None = None
    results: dict[int, Result] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.kind == "ok"


@dataclass(frozen=True)
class Send:
    """One command for the tree: ``targets`` is a hypervisor id, a set of them, or ALL."""

    job_id: str
    operation: str
    targets: int | frozenset[int] | None
    request: Message  # the operation's request message (cloudland/operations.py)
    timeout_s: float
    kind: str = ""  # the job's kind: whether unreachable targets are retried is the kind's

    def stored(self) -> dict[str, Any]:
        """``Job.targets`` for this send."""
        if isinstance(self.targets, int):
            return {"hypervisor": self.targets}
        if self.targets is None:
            return {"all": True}
        return {"hypervisors": sorted(self.targets)}


@dataclass(frozen=True)
class Settings:
    """What kinds may need to plan: the scheduler's weigher, timeouts, the guests' image source."""

    weigher: str = "spread"
    job_timeout_s: float = 120.0
    capture_timeout_s: float = 3600.0
    guest_source: GuestSource | None = None


class Plan:
    """What a kind decided for a batch of its jobs: sends, and outcomes decided at once."""

    def __init__(self, session: Session, settings: Settings) -> None:
        self.session = session
        self.settings = settings
        self.sends: list[Send] = []
        self.decided: list[Outcome] = []

    def send(self, job: Job, operation: str, targets: int | Iterable[int] | None, request: Message,
             timeout_s: float | None = None) -> None:
        """Send ``operation`` with its ``request`` message for ``job`` to ``targets`` (a
        hypervisor, several, or ALL). A request of another type is a TypeError, here."""
        operations.pack(operation, request)  # the type is checked now, where the kind made it
        if targets is not None and not isinstance(targets, int):
            targets = frozenset(targets)
        send = Send(job.id, operation, targets, request, timeout_s or self.settings.job_timeout_s, job.kind)
        job.targets = send.stored()
        job.hypervisor_id = targets if isinstance(targets, int) else None
        self.sends.append(send)

    def decide(self, job: Job, kind: str, reason: str | None = None) -> None:
        """End ``job`` without sending anything (``kind``: ok, failed)."""
        self.decided.append(Outcome(job.id, kind, reason))


class Kind:
    """A kind of job. Subclasses set ``name`` and ``subject`` and implement plan and settle.

    ``retry_unavailable``: targets that could not be reached are asked again under the same
    job id until the retry budget is spent (else they count as failed at once: best effort).
    """

    name: ClassVar[str]
    subject: ClassVar[str]
    retry_unavailable: ClassVar[bool] = True

    def plan(self, plan: Plan, jobs: list[Job]) -> None:
        """For each of ``jobs`` (pending or dispatched, oldest first): ``plan.send`` or ``plan.decide``."""
        raise NotImplementedError

    def settle(self, session: Session, done: list[tuple[Job, Outcome]]) -> None:
        """Apply outcomes to the subjects. The engine has already set each job's terminal state."""


KINDS: dict[str, Kind] = {}
FOLLOW_UPS = "cloudland_follow_ups"  # Session.info key: jobs made while planning or settling others


def follow_up(session: Session, jobs: Iterable[Job]) -> None:
    """Add ``jobs``, made while planning or settling other jobs (a network change a placement
    made, a resync an answer asked for), to ``session``; whoever commits it submits them
    (``follow_ups``): the engine after its own commits, a request after its own."""
    made = list(jobs)
    session.add_all(made)
    session.info.setdefault(FOLLOW_UPS, []).extend(job.id for job in made)


def follow_ups(session: Session) -> list[str]:
    """The ids of the jobs ``follow_up`` added to ``session`` since the last call (to submit once committed)."""
    ids: list[str] = session.info.pop(FOLLOW_UPS, [])
    return ids


def register(kind: type[Kind]) -> type[Kind]:
    """Class decorator: make ``kind`` known to the engine under ``kind.name``."""
    if kind.name in KINDS and type(KINDS[kind.name]) is not kind:
        raise ValueError(f"job kind {kind.name!r} registered twice")
    KINDS[kind.name] = kind()
    return kind


def unregister(name: str) -> None:
    """Forget a kind (tests that register their own)."""
    KINDS.pop(name, None)
