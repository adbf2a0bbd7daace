"""The job engine: jobs from the database to the tree, and their outcomes back.

Generic: what a job sends and what its outcome means belong to its kind (kinds.py). The
engine owns what every kind shares:

    planner   takes due job ids; in one transaction lets each kind plan its jobs (placement,
              what to send, to whom), marks them dispatched; hands the sends to the senders.
              Jobs on one subject run one at a time, oldest first: a job whose subject has an
              older unfinished job waits for it. Jobs that arrive within LINGER_S of the first
              of a pass are planned with it (micro-batching: concurrent single creates share
              one read of the hosts, one claim per host and one commit).
    senders   one blocking gRPC Dispatch per send, under the job's id: to one hypervisor
              (unicast), a set (multicast) or all (broadcast)
    writer    applies outcomes in batches (gathered as the planner gathers jobs): the job's
              terminal state, then its kind's settle

Targets that could not be reached (their subtree lost, the root down or still holding the job
from before an API restart) are asked again with backoff under the same id, and only they,
until the retry budget is spent. Agents execute every operation idempotently on the job id,
so a job sent again is safe. At start every job that is not terminal is planned again: that is
how an API restart loses nothing (docs/architecture.md "Jobs").
"""

from __future__ import annotations

import heapq
import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cloudland import operations
from cloudland.errors import InvalidRequest, RootUnreachable, TreeError
from cloudland_api.jobs.kinds import KINDS, Kind, Outcome, Plan, Result, Send, Settings, follow_ups
from cloudland_api.models import TERMINAL, Job, JobState, utcnow
from cloudland_proto.v1 import envelope_pb2 as pb

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_BUDGET_S = 600.0   # how long a job may wait for an unreachable hypervisor
MAX_BATCH = 500          # jobs per planner or writer transaction
SWEEP_S = 1.0            # how often jobs waiting for their subject are looked at again
# Micro-batching (issue 15): after the first job id (or outcome) of a pass, the planner (and the
# writer) wait this much longer for more, so concurrent single creates share one planning pass
# (one read of the hosts, one claim per host, one commit) and one settling transaction.
LINGER_S = 0.005
FINAL = {pb.OK: "ok", pb.TIMEOUT: "timeout"}  # every other status but UNAVAILABLE: failed


class Client(Protocol):
    """What the engine needs of the root's client (cloudland.client.RootClient, or a fake)."""

    def run(self, operation: str, targets: Any = None, **kwargs: Any) -> list[pb.Reply]: ...

    def close(self) -> None: ...


class Engine:
    """Plans, sends and settles jobs of every registered kind; ``start()`` it, ``stop()`` it.

    ``run_once()`` does one whole pass on the calling thread instead (tests of this layer).
    """

    def __init__(self, write_sessions: sessionmaker[Session], client: Client | None,
                 settings: Settings | None = None, *, kinds: Mapping[str, Kind] | None = None, workers: int = 64,
                 ready: threading.Event | None = None, retry_budget_s: float = RETRY_BUDGET_S,
                 backoff: Callable[[int], float] | None = None, linger_s: float = LINGER_S) -> None:
        self._sessions = write_sessions
        self._linger_s = linger_s
        self._client = client
        self.settings = settings or Settings()
        self._kinds = kinds if kinds is not None else KINDS
        self._ready = ready  # set once hypervisors were read from the tree (reconcile/observer.py)
        self.retry_budget_s = retry_budget_s
        self._backoff = backoff or (lambda tries: min(0.25 * 2 ** (tries - 1), 10.0))  # seconds before try N+1
        self._incoming: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._outcomes: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self._delayed: list[tuple[float, str]] = []
        self._lock = threading.Lock()  # guards everything below
        self._retries: dict[str, tuple[int, float]] = {}            # job id -> (tries, first retry time)
        self._partial: dict[str, dict[int, Result]] = {}            # job id -> final answers so far
        self._narrow: dict[str, frozenset[int]] = {}                # job id -> targets still to ask
        self._waiting: dict[tuple[str, int], set[str]] = defaultdict(set)  # subject -> jobs behind its head
        self._inflight: set[str] = set()                            # job ids planned and not yet answered
        self._senders = ThreadPoolExecutor(workers, thread_name_prefix="jobs-send")
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.settled = threading.Condition()  # notified after each batch of outcomes is committed
        self.on_settled: list[Callable[[list[str]], None]] = []

    # -- life ---------------------------------------------------------------------------

    def unfinished(self) -> list[str]:
        with self._sessions() as session:
            return list(session.scalars(select(Job.id).where(Job.state.not_in(TERMINAL))
                                        .order_by(Job.created_at, Job.id)))

    def start(self) -> None:
        """Plan every unfinished job again, then run the planner and the writer."""
        ids = self.unfinished()
        if ids:
            log.info("event=jobs_recovered count=%d", len(ids))
        for target in (self._plan_loop, self._write_loop):
            thread = threading.Thread(target=target, name=f"jobs-{target.__name__.strip('_')}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self.submit(ids)

    def stop(self) -> None:
        """Stop taking jobs; unfinished ones stay in the database for the next start."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._senders.shutdown(wait=False, cancel_futures=True)
        if self._client is not None:
            self._client.close()

    def submit(self, job_ids: Iterable[str]) -> None:
        """Queue committed jobs."""
        for job_id in job_ids:
            self._incoming.put(job_id)

    def run_once(self, job_ids: Iterable[str] | None = None) -> list[Send]:
        """One pass on this thread: plan ``job_ids`` (default: every unfinished job) and every
        retry now due, send, and write the outcomes. Returns what was sent."""
        ids = list(job_ids) if job_ids is not None else self.unfinished()
        ids += self._due()
        sends = self._plan(list(dict.fromkeys(ids)))
        for send in sends:
            self._send(send)
        self._drain_outcomes()
        return sends

    def _drain_outcomes(self) -> None:
        batch: list[Outcome] = []
        while True:
            try:
                batch.append(self._outcomes.get_nowait())
            except queue.Empty:
                break
        if batch:
            self._after_write(batch, self._write(batch))

    # -- planner ------------------------------------------------------------------------

    def _due(self, limit: int = MAX_BATCH) -> list[str]:
        due: list[str] = []
        now = time.monotonic()
        with self._lock:
            while self._delayed and self._delayed[0][0] <= now and len(due) < limit:
                due.append(heapq.heappop(self._delayed)[1])
        return due

    def _take(self, timeout: float) -> list[str]:
        """Up to MAX_BATCH job ids that are due, waiting at most ``timeout`` for the first."""
        due = self._due()
        with self._lock:
            if self._delayed:
                timeout = min(timeout, max(0.0, self._delayed[0][0] - time.monotonic()))
        try:
            if not due:
                due.append(self._incoming.get(timeout=timeout))
        except queue.Empty:
            return due
        return _gather(self._incoming, due, self._linger_s)

    def _plan_loop(self) -> None:
        if self._client is None:
            return  # no tree configured: jobs stay pending
        if self._ready is not None:
            self._ready.wait(timeout=30)
        swept = time.monotonic()
        while not self._stopping.is_set():
            if time.monotonic() - swept > SWEEP_S:
                swept = time.monotonic()
                self._wake_waiting(None)
            ids = self._take(0.25)
            if not ids:
                continue
            try:
                sends = self._plan(ids)
            except Exception:  # a database error must not end the loop; retry these jobs later
                log.exception("event=plan_failed jobs=%d", len(ids))
                self._later(ids, 1.0)
                continue
            for send in sends:
                self._senders.submit(self._send, send)

    def _plan(self, ids: list[str]) -> list[Send]:
        """Let each kind plan its jobs and mark what is sent dispatched, in one transaction."""
        if not ids:
            return []
        with self._lock:
            ids = [i for i in ids if i not in self._inflight]
        with self._sessions() as session:
            jobs = list(session.scalars(select(Job).where(Job.id.in_(set(ids)), Job.state.not_in(TERMINAL))
                                        .order_by(Job.created_at, Job.id)))
            runnable = self._heads_only(session, jobs)
            plan = Plan(session, self.settings)
            by_kind: dict[str, list[Job]] = defaultdict(list)
            for job in runnable:
                by_kind[job.kind].append(job)
            # No autoflush: every change a kind makes goes in one flush at the commit.
            with session.no_autoflush:
                for name, batch in by_kind.items():
                    kind = self._kinds.get(name)
                    if kind is None:
                        for job in batch:
                            plan.decide(job, "failed", f"unknown job kind {name!r}: no handler is registered")
                        continue
                    kind.plan(plan, batch)
                by_id = {job.id: job for job in runnable}
                sends = [self._narrowed(send) for send in plan.sends]
                for send in sends:
                    job = by_id[send.job_id]
                    job.state = JobState.dispatched
                    job.attempts += 1
            session.commit()
            self.submit(follow_ups(session))
        with self._lock:
            self._inflight.update(send.job_id for send in sends)
        for outcome in plan.decided:
            self._outcomes.put(outcome)
        return sends

    def _heads_only(self, session: Session, jobs: list[Job]) -> list[Job]:
        """``jobs`` that are the oldest unfinished job of their subject; the rest wait for it."""
        if not jobs:
            return []
        heads: dict[tuple[str, int], str] = {}
        rows = session.execute(
            select(Job.subject_type, Job.subject_id, Job.id)
            .where(Job.state.not_in(TERMINAL), Job.subject_id.in_({j.subject_id for j in jobs}),
                   Job.subject_type.in_({j.subject_type for j in jobs}))
            .order_by(Job.created_at, Job.id)
        )
        for subject_type, subject_id, job_id in rows:
            heads.setdefault((subject_type, subject_id), job_id)
        runnable = []
        with self._lock:
            for job in jobs:
                if heads.get(job.subject) == job.id:
                    runnable.append(job)
                else:
                    self._waiting[job.subject].add(job.id)
                    log.info("event=job_waiting job=%s subject=%s:%d behind=%s", job.id, job.subject_type,
                             job.subject_id, heads.get(job.subject))
        return runnable

    def _narrowed(self, send: Send) -> Send:
        """A retry asks only the targets that have not answered yet."""
        with self._lock:
            remaining = self._narrow.get(send.job_id)
        if remaining is None or isinstance(send.targets, int):
            return send
        return Send(send.job_id, send.operation, remaining, send.request, send.timeout_s, send.kind)

    def _later(self, ids: Iterable[str], delay: float) -> None:
        with self._lock:
            for job_id in ids:
                heapq.heappush(self._delayed, (time.monotonic() + delay, job_id))

    def _wake_waiting(self, subjects: Iterable[tuple[str, int]] | None) -> None:
        """Plan again the jobs waiting behind ``subjects`` (None: behind any subject)."""
        with self._lock:
            keys = list(self._waiting) if subjects is None else [s for s in subjects if s in self._waiting]
            ids = [job_id for key in keys for job_id in self._waiting.pop(key)]
        self.submit(ids)

    # -- senders ------------------------------------------------------------------------

    def _send(self, send: Send) -> None:
        assert self._client is not None
        try:
            replies = self._client.run(send.operation, send.targets, request=send.request, timeout=send.timeout_s,
                                       job_id=send.job_id)
        except (RootUnreachable, InvalidRequest, TreeError) as exc:
            # InvalidRequest here is the root's ALREADY_EXISTS: it still holds this job from
            # before a restart. Either way: ask again later under the same id.
            self._unreached(send, f"unreachable: {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - a sender thread must always report
            log.exception("event=send_failed job=%s targets=%s", send.job_id, send.stored())
            self._unreached(send, f"sending failed: {exc}")
            return
        self._collect(send, replies)

    def _unreached(self, send: Send, why: str) -> None:
        """Nothing came back: every target of the send is still to ask."""
        if isinstance(send.targets, int):
            self._collect(send, [], {send.targets: f"hypervisor {send.targets} {why}"})
        elif send.targets is None:
            self._retry(send, None, f"the tree is {why}")
        else:
            self._collect(send, [], {hv: f"hypervisor {hv} {why}" for hv in send.targets})

    def _collect(self, send: Send, replies: list[pb.Reply], unreached: dict[int, str] | None = None) -> None:
        """Record each target's answer; retry those that could not be reached; settle when all answered."""
        expected = ({send.targets} if isinstance(send.targets, int) else
                    set(send.targets) if send.targets is not None else {r.hypervisor for r in replies})
        again = dict(unreached or {})
        with self._lock:
            partial = self._partial.setdefault(send.job_id, {})
        for reply in replies:
            hv = reply.hypervisor
            if hv not in expected or hv in partial:
                continue
            if reply.status == pb.UNAVAILABLE:
                again[hv] = f"hypervisor {hv} unavailable: {reply.error}"
            elif reply.status == pb.OK:
                partial[hv] = self._ok(send, reply)
            elif reply.status == pb.TIMEOUT:
                partial[hv] = Result("timeout", f"timeout: hypervisor {hv} did not answer within "
                                                f"{send.timeout_s:.0f} s")
            else:
                partial[hv] = Result("failed", f"hypervisor {hv}: {reply.error or pb.Status.Name(reply.status)}")
        for hv in expected - set(partial) - set(again):
            again[hv] = f"no reply from hypervisor {hv}"
        kind = self._kinds.get(send.kind)
        if again and (kind is None or kind.retry_unavailable):
            self._retry(send, again, "; ".join(again[hv] for hv in sorted(again)[:3]))
            return
        for hv, why in again.items():
            partial[hv] = Result("unavailable", why)
        self._finish(send, partial)

    @staticmethod
    def _ok(send: Send, reply: pb.Reply) -> Result:
        """An OK reply's result message; one of an unexpected type makes the target failed."""
        try:
            return Result("ok", result=operations.result_of(reply, send.operation))
        except InvalidRequest as exc:
            return Result("failed", f"hypervisor {reply.hypervisor}: {exc}")

    def _retry(self, send: Send, again: dict[int, str] | None, reason: str) -> None:
        with self._lock:
            tries, first = self._retries.get(send.job_id, (0, time.monotonic()))
            tries += 1
            self._retries[send.job_id] = (tries, first)
            self._inflight.discard(send.job_id)
            if again is not None and not isinstance(send.targets, int):
                self._narrow[send.job_id] = frozenset(again)
            partial = self._partial.get(send.job_id, {})
        waited = time.monotonic() - first
        if tries > 1 and waited > self.retry_budget_s:  # one retry at least, whatever the budget
            gave_up = f"{reason} (gave up after {tries} tries in {waited:.0f} s)"
            for hv in (again or {}):
                partial[hv] = Result("failed", gave_up)
            self._finish(send, partial, gave_up if again is None or isinstance(send.targets, int) else None)
            return
        delay = self._backoff(tries)
        log.warning("event=job_retry job=%s try=%d delay_s=%.2f reason=%s", send.job_id, tries, delay, reason)
        self._later([send.job_id], delay)

    def _finish(self, send: Send, results: dict[int, Result], reason: str | None = None) -> None:
        self._outcomes.put(judge(send, results, reason))

    # -- writer -------------------------------------------------------------------------

    def _write_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                batch = _gather(self._outcomes, [self._outcomes.get(timeout=0.25)], self._linger_s)
            except queue.Empty:
                continue
            try:
                subjects = self._write(batch)
            except Exception:
                log.exception("event=write_failed outcomes=%d", len(batch))
                time.sleep(0.5)
                for outcome in batch:  # keep them: a terminal state must not be lost
                    self._outcomes.put(outcome)
                continue
            self._after_write(batch, subjects)

    def _write(self, batch: list[Outcome]) -> set[tuple[str, int]]:
        """Commit the outcomes; the subjects whose jobs ended."""
        by_id = {o.job_id: o for o in batch}
        with self._sessions() as session:
            jobs = list(session.scalars(select(Job).where(Job.id.in_(by_id))))
            with session.no_autoflush:  # the rows' changes go in one flush at the commit
                finish(session, [(job, by_id[job.id]) for job in jobs if job.state not in TERMINAL], self._kinds)
            session.commit()
            self.submit(follow_ups(session))
            return {job.subject for job in jobs}

    def _after_write(self, batch: list[Outcome], subjects: set[tuple[str, int]]) -> None:
        with self._lock:
            for outcome in batch:
                for table in (self._retries, self._partial, self._narrow):
                    table.pop(outcome.job_id, None)
                self._inflight.discard(outcome.job_id)
        self._wake_waiting(subjects)
        with self.settled:
            self.settled.notify_all()
        for callback in self.on_settled:
            callback([o.job_id for o in batch])


def _gather(source: queue.SimpleQueue[T], batch: list[T], linger_s: float) -> list[T]:
    """``batch`` and what else ``source`` yields within ``linger_s``, up to MAX_BATCH items."""
    until = time.monotonic() + linger_s
    try:
        while len(batch) < MAX_BATCH:
            left = until - time.monotonic()
            batch.append(source.get(timeout=left) if left > 0 else source.get_nowait())
    except queue.Empty:
        pass
    return batch


def judge(send: Send, results: dict[int, Result], reason: str | None = None) -> Outcome:
    """One outcome from every target's answer: ok when all are ok, else failed (or timeout when
    every one that did not succeed timed out), with the first few reasons."""
    if reason is not None:
        return Outcome(send.job_id, "failed", reason, results=results)
    bad = {hv: r for hv, r in sorted(results.items()) if r.status != "ok"}
    if isinstance(send.targets, int):
        one = results.get(send.targets, Result("unavailable", f"no reply from hypervisor {send.targets}"))
        if one.status == "ok":
            return Outcome(send.job_id, "ok", result=one.result, results=results)
        return Outcome(send.job_id, "timeout" if one.status == "timeout" else "failed", one.error, results=results)
    if not bad:
        return Outcome(send.job_id, "ok", results=results)
    kind = "timeout" if all(r.status == "timeout" for r in bad.values()) else "failed"
    shown = "; ".join(r.error for r in list(bad.values())[:3]) + ("; ..." if len(bad) > 3 else "")
    return Outcome(send.job_id, kind, f"{kind} on {len(bad)} of {len(results)} hypervisors: {shown}",
                   results=results)


def finish(session: Session, done: list[tuple[Job, Outcome]], kinds: Mapping[str, Kind] | None = None) -> None:
    """End each job with its outcome, then let its kind settle the subject (in ``session``)."""
    kinds = kinds if kinds is not None else KINDS
    by_kind: dict[str, list[tuple[Job, Outcome]]] = defaultdict(list)
    for job, outcome in done:
        end(job, outcome)
        by_kind[job.kind].append((job, outcome))
    for name, items in by_kind.items():
        kind = kinds.get(name)
        if kind is not None:
            kind.settle(session, items)


def end(job: Job, outcome: Outcome) -> None:
    """Move ``job`` to the terminal state ``outcome`` says (its subject is its kind's to settle)."""
    job.finished_at = utcnow()
    job.reason = outcome.reason
    job.state = (JobState.succeeded if outcome.ok else
                 JobState.timeout if outcome.kind == "timeout" else JobState.failed)
    if outcome.ok:
        log.info("event=job_succeeded job=%s kind=%s action=%s subject=%s:%d targets=%s", job.id, job.kind,
                 job.action, job.subject_type, job.subject_id, job.targets)
    else:
        log.warning("event=job_failed job=%s kind=%s action=%s subject=%s:%d targets=%s reason=%s", job.id,
                    job.kind, job.action, job.subject_type, job.subject_id, job.targets, outcome.reason)
