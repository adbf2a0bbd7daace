"""The dispatcher: jobs from the database to the tree and their outcomes back.

Three kinds of thread, so the database sees few, batched transactions:

    planner   takes ready job ids, and in one transaction places new instances (the
              scheduler's claims) and marks the jobs dispatched; hands them to the senders
    senders   one blocking gRPC Dispatch each, under the job's id, to its one hypervisor
    writer    applies outcomes in batches: job terminal state, instance status, claims

A job whose hypervisor is unreachable (its subtree lost, the root down or still holding
the job from before an API restart) is retried with backoff under the same id until its
retry budget is spent. The agent executes every operation idempotently on its job id, so
sending a job again is safe (ARCHITECTURE.md "Lifecycle of a job"). At start every job
that is not terminal is sent again: that is how an API restart loses nothing. What each
job carries to its agent is commands.py's.
"""

from __future__ import annotations

import heapq
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cloudland.client import RootClient, struct_to_dict
from cloudland.errors import InvalidRequest, RootUnreachable, TreeError
from cloudland_api import hypervisors, scheduler
from cloudland_api.commands import GuestSource, agent_args
from cloudland_api.models import TERMINAL, Image, Instance, Job, JobState, utcnow
from cloudland_proto.v1 import envelope_pb2 as pb

log = logging.getLogger(__name__)

RETRY_BUDGET_S = 600.0        # how long a job may wait for an unreachable hypervisor
MAX_BATCH = 500               # jobs per planner or writer transaction
OPERATIONS = {"create": "vm.create", "start": "vm.start", "stop": "vm.stop", "reboot": "vm.reboot",
              "delete": "vm.delete", "resize": "vm.resize", "rebuild": "vm.rebuild", "capture": "vm.capture"}
# The instance status a successful action leaves.
SETTLED = {"create": "running", "start": "running", "stop": "stopped", "reboot": "running",
           "resize": "stopped", "delete": "deleted", "capture": "stopped"}


@dataclass(frozen=True)
class Outcome:
    """What became of one send: ``ok``, ``failed``, ``timeout`` or ``retry``."""

    job_id: str
    kind: str
    reason: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)


class Dispatcher:
    """Sends jobs to the root and records their outcomes; ``start()`` it, ``stop()`` it."""

    def __init__(self, write_sessions: sessionmaker[Session], root_endpoint: str, *, weigher: str = "spread",
                 workers: int = 64, job_timeout_s: float = 120.0, capture_timeout_s: float = 3600.0,
                 ready: threading.Event | None = None, guest_source: GuestSource | None = None) -> None:
        self._sessions = write_sessions
        self._endpoint = root_endpoint
        self._weigher = weigher
        self._job_timeout_s = job_timeout_s
        self._capture_timeout_s = capture_timeout_s
        self._ready = ready  # set once hypervisors were read from the tree (sync.py)
        self._guest_source = guest_source
        self._incoming: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._outcomes: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self._delayed: list[tuple[float, str]] = []
        self._delayed_lock = threading.Lock()
        self._retries: dict[str, tuple[int, float]] = {}  # job id -> (tries, first retry time)
        self.retry_budget_s = RETRY_BUDGET_S
        self._senders = ThreadPoolExecutor(workers, thread_name_prefix="dispatch-send")
        self._client = RootClient(root_endpoint) if root_endpoint else None
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.settled = threading.Condition()  # notified after each batch of outcomes is committed
        self.on_settled: list[Callable[[list[str]], None]] = []

    # -- life ---------------------------------------------------------------------------

    def start(self) -> None:
        """Re-send every unfinished job, then run the planner and the writer."""
        with self._sessions() as session:
            unfinished = session.scalars(select(Job.id).where(Job.state.not_in(TERMINAL)).order_by(Job.created_at))
            ids = list(unfinished)
        if ids:
            log.info("event=jobs_recovered count=%d", len(ids))
        for target in (self._plan_loop, self._write_loop):
            thread = threading.Thread(target=target, name=f"dispatch-{target.__name__.strip('_')}", daemon=True)
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
        """Queue committed jobs for dispatch."""
        for job_id in job_ids:
            self._incoming.put(job_id)

    # -- planner ------------------------------------------------------------------------

    def _take(self, timeout: float) -> list[str]:
        """Up to MAX_BATCH job ids that are due, waiting at most ``timeout`` for the first."""
        due: list[str] = []
        now = time.monotonic()
        with self._delayed_lock:
            while self._delayed and self._delayed[0][0] <= now and len(due) < MAX_BATCH:
                due.append(heapq.heappop(self._delayed)[1])
            if self._delayed:
                timeout = min(timeout, max(0.0, self._delayed[0][0] - now))
        try:
            if not due:
                due.append(self._incoming.get(timeout=timeout))
            while len(due) < MAX_BATCH:
                due.append(self._incoming.get_nowait())
        except queue.Empty:
            pass
        return due

    def _plan_loop(self) -> None:
        if self._client is None:
            return  # no tree configured: jobs stay pending
        if self._ready is not None:
            self._ready.wait(timeout=30)
        while not self._stopping.is_set():
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
                self._senders.submit(self._send, *send)

    def _plan(self, ids: list[str]) -> list[tuple[str, int, str, dict[str, Any]]]:
        """Place and mark dispatched, in one transaction; what to send."""
        settled_now: list[Outcome] = []  # decided here, without the tree
        with self._sessions() as session:
            placer = scheduler.Placer(session, self._weigher)
            rows = session.execute(
                select(Job, Instance).join(Instance, Job.instance_id == Instance.id)
                .where(Job.id.in_(set(ids)), Job.state.not_in(TERMINAL)).order_by(Job.created_at)
            ).all()
            # No autoflush: every claim's UPDATE would first flush the rows changed so far, one
            # UPDATE each; they all go in one flush at the commit, in the same transaction.
            with session.no_autoflush:
                sends = self._plan_rows(session, placer, rows, settled_now)
            session.commit()
        for outcome in settled_now:
            self._outcomes.put(outcome)
        return sends

    def _plan_rows(self, session: Session, placer: scheduler.Placer, rows: Any,
                   settled_now: list[Outcome]) -> list[tuple[str, int, str, dict[str, Any]]]:
        """New VMs placed all at once (one claim per host), then every job marked dispatched."""
        sends = []
        # Jobs for hosts the tree no longer has (gone while the job waited or was retried) end
        # here: nothing sent there can arrive. New VMs below are placed on up hosts only.
        lost = hypervisors.lost_hosts(session, (instance.hypervisor_id for _, instance in rows))
        new = [(job, instance) for job, instance in rows if job.action == "create" and instance.hypervisor_id is None]
        demands = [scheduler.Demand(i.vcpus, i.memory_mib, i.arch) for _, i in new]
        no_room = set()
        for (job, instance), demand, host in zip(new, demands, placer.place_many(demands)):
            if host is None:
                settled_now.append(Outcome(job.id, "failed", placer.no_capacity(demand)))
                no_room.add(job.id)
            instance.hypervisor_id = host
        for job, instance in rows:
            if job.id in no_room:
                continue
            if instance.hypervisor_id in lost:
                hv, state = instance.hypervisor_id, lost[instance.hypervisor_id]
                settled_now.append(Outcome(job.id, "ok", hypervisors.nothing_to_clean(hv, state))
                                   if job.action == "delete" else
                                   Outcome(job.id, "failed", f"{hypervisors.lost_reason(hv, state)}: nothing was sent"))
                continue
            if (job.action == "resize" and job.state == JobState.pending and instance.hypervisor_id is not None
                    and not self._claim_resize(session, job, instance)):
                settled_now.append(Outcome(job.id, "failed", f"no capacity on hypervisor {instance.hypervisor_id} "
                                                        f"to resize to {job.args['vcpus']} vCPU and "
                                                        f"{job.args['memory_mib']} MiB"))
                continue
            if instance.hypervisor_id is None:
                # Never placed (its create failed for want of room): nothing exists to act on.
                settled_now.append(Outcome(job.id, "ok") if job.action == "delete" else
                                   Outcome(job.id, "failed", "instance was never placed on a hypervisor"))
                continue
            job.hypervisor_id = instance.hypervisor_id
            job.state = JobState.dispatched
            job.attempts += 1
            guest = None
            if self._guest_source is not None and job.action in ("create", "rebuild"):
                guest = self._guest_source.guest_args(session, instance, job.args.get("image_id"))
            if self._guest_source is not None and job.action == "capture":
                guest = self._guest_source.capture_args(job.args["image_id"], self._capture_timeout_s)
            sends.append((job.id, instance.hypervisor_id, OPERATIONS[job.action], agent_args(job, instance, guest)))
        return sends

    @staticmethod
    def _claim_resize(session: Session, job: Job, instance: Instance) -> bool:
        """Claim the growth of a resize on the instance's host (a shrink always fits)."""
        dv = max(0, job.args["vcpus"] - instance.vcpus)
        dm = max(0, job.args["memory_mib"] - instance.memory_mib)
        assert instance.hypervisor_id is not None
        # Not a new VM: a disabled host (closed to new VMs) still lets its own VMs grow.
        if (dv or dm) and not scheduler.claim(session, instance.hypervisor_id, dv, dm, new_vm=False):
            return False
        job.args = job.args | {"claimed_vcpus": dv, "claimed_memory_mib": dm}
        return True

    def _later(self, ids: Iterable[str], delay: float) -> None:
        with self._delayed_lock:
            for job_id in ids:
                heapq.heappush(self._delayed, (time.monotonic() + delay, job_id))

    # -- senders ------------------------------------------------------------------------

    def _send(self, job_id: str, hypervisor: int, operation: str, args: dict[str, Any]) -> None:
        assert self._client is not None
        try:
            timeout = self._timeout(operation)
            replies = self._client.run(operation, hypervisor, args=args, timeout=timeout, job_id=job_id)
            outcome = self._judge(job_id, hypervisor, replies, timeout)
        except (RootUnreachable, InvalidRequest, TreeError) as exc:
            # InvalidRequest here is the root's ALREADY_EXISTS: it still holds this job from
            # before a restart. Either way: ask again later under the same id.
            outcome = Outcome(job_id, "retry", f"hypervisor {hypervisor} unreachable: {exc}")
        except Exception as exc:  # noqa: BLE001 - a sender thread must always report
            log.exception("event=send_failed job=%s hypervisor=%d", job_id, hypervisor)
            outcome = Outcome(job_id, "retry", f"sending to hypervisor {hypervisor} failed: {exc}")
        if outcome.kind == "retry":
            self._retry(outcome)
        else:
            self._outcomes.put(outcome)

    def _timeout(self, operation: str) -> float:
        """An attempt's deadline: a capture copies and uploads a whole disk, the rest are quick."""
        return self._capture_timeout_s if operation == "vm.capture" else self._job_timeout_s

    def _judge(self, job_id: str, hypervisor: int, replies: list[pb.Reply], timeout: float) -> Outcome:
        mine = [r for r in replies if r.hypervisor == hypervisor]
        if not mine:
            return Outcome(job_id, "retry", f"no reply from hypervisor {hypervisor}")
        reply = mine[0]
        if reply.status == pb.OK:
            return Outcome(job_id, "ok", payload=struct_to_dict(reply.payload))
        if reply.status == pb.TIMEOUT:
            return Outcome(job_id, "timeout",
                           f"timeout: hypervisor {hypervisor} did not answer within {timeout:.0f} s")
        if reply.status == pb.UNAVAILABLE:
            return Outcome(job_id, "retry", f"hypervisor {hypervisor} unavailable: {reply.error}")
        status = pb.Status.Name(reply.status)
        return Outcome(job_id, "failed", f"hypervisor {hypervisor}: {reply.error or status}")

    def _retry(self, outcome: Outcome) -> None:
        tries, first = self._retries.get(outcome.job_id, (0, time.monotonic()))
        tries += 1
        self._retries[outcome.job_id] = (tries, first)
        if time.monotonic() - first > self.retry_budget_s:
            self._outcomes.put(Outcome(outcome.job_id, "failed",
                                       f"{outcome.reason} (gave up after {tries} tries in "
                                       f"{time.monotonic() - first:.0f} s)"))
            return
        delay = min(0.25 * 2 ** (tries - 1), 10.0)
        log.warning("event=job_retry job=%s try=%d delay_s=%.2f reason=%s", outcome.job_id, tries, delay,
                    outcome.reason)
        self._later([outcome.job_id], delay)

    # -- writer -------------------------------------------------------------------------

    def _write_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                batch = [self._outcomes.get(timeout=0.25)]
            except queue.Empty:
                continue
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._outcomes.get_nowait())
                except queue.Empty:
                    break
            try:
                self._write(batch)
            except Exception:
                log.exception("event=write_failed outcomes=%d", len(batch))
                time.sleep(0.5)
                for outcome in batch:  # keep them: a terminal state must not be lost
                    self._outcomes.put(outcome)
                continue
            for outcome in batch:
                self._retries.pop(outcome.job_id, None)
            with self.settled:
                self.settled.notify_all()
            for callback in self.on_settled:
                callback([o.job_id for o in batch])

    def _write(self, batch: list[Outcome]) -> None:
        by_id = {o.job_id: o for o in batch}
        with self._sessions() as session:
            rows = session.execute(
                select(Job, Instance).join(Instance, Job.instance_id == Instance.id).where(Job.id.in_(by_id))
            ).all()
            releases = scheduler.Releases()
            with session.no_autoflush:  # the rows' changes go in one flush at the commit
                for job, instance in rows:
                    if job.state in TERMINAL:
                        continue  # already settled (a duplicate outcome after a retry)
                    settle(session, job, instance, by_id[job.id], releases)
                releases.apply(session)  # one UPDATE per host, not per VM
            session.commit()


def settle(session: Session, job: Job, instance: Instance, outcome: Outcome,
           releases: scheduler.Releases | None = None) -> None:
    """Move ``job`` to its terminal state and ``instance`` to what that means, claims included.

    Claims given back go to ``releases`` (applied by the caller), else are released at once.
    """
    give_back = releases.add if releases is not None else partial(scheduler.release, session)
    now = utcnow()
    job.finished_at = now
    if instance.job_id == job.id:
        instance.job_id = None
    if outcome.kind == "ok":
        job.state = JobState.succeeded
        job.reason = outcome.reason  # a note, if any (a delete on a gone host: nothing to clean)
        _succeeded(job, instance, outcome.payload, give_back)
        log.info("event=job_succeeded job=%s action=%s instance=%d hypervisor=%s", job.id, job.action,
                 instance.id, job.hypervisor_id)
        return
    job.state = JobState.timeout if outcome.kind == "timeout" else JobState.failed
    job.reason = outcome.reason
    instance.status_reason = f"{job.action} failed: {outcome.reason}"
    log.warning("event=job_failed job=%s action=%s instance=%d hypervisor=%s reason=%s", job.id, job.action,
                instance.id, job.hypervisor_id, outcome.reason)
    if job.action in ("create", "delete"):
        instance.status = "error"
    if job.action == "capture":
        image = session.get(Image, job.args["image_id"])
        if image is not None and image.status == "saving":  # (None: deleted meanwhile)
            image.status = "error"
    if job.action == "resize" and instance.hypervisor_id is not None:
        give_back(instance.hypervisor_id, job.args.get("claimed_vcpus", 0), job.args.get("claimed_memory_mib", 0))


def _succeeded(job: Job, instance: Instance, payload: dict[str, Any],
               give_back: Callable[[int, int, int], None]) -> None:
    instance.status_reason = None
    if job.action == "delete":
        if instance.hypervisor_id is not None and instance.status != "deleted":
            give_back(instance.hypervisor_id, instance.vcpus, instance.memory_mib)
        instance.status = "deleted"
        return
    if job.action == "resize":
        # The growth was claimed at dispatch; a shrink gives room back now.
        if instance.hypervisor_id is not None:
            give_back(instance.hypervisor_id, max(0, instance.vcpus - job.args["vcpus"]),
                      max(0, instance.memory_mib - job.args["memory_mib"]))
        instance.vcpus, instance.memory_mib = job.args["vcpus"], job.args["memory_mib"]
        instance.disk_gib = job.args.get("disk_gib", instance.disk_gib)
        instance.flavor_id = job.args.get("flavor_id", instance.flavor_id)
    if job.action == "rebuild":
        instance.image_id = job.args["image_id"]
    state = payload.get("state")
    if job.action == "rebuild":
        instance.status = "running" if state == "running" else "stopped"
    else:
        instance.status = SETTLED[job.action]
