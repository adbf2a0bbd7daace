"""The observer: hypervisors and observed VM state, from the root's Watch stream.

The root streams every hypervisor's report once (a snapshot), then only the reports that change
and the hypervisors whose leaf goes down or comes up (proto/README.md §8.1). The observer keeps
them (``reports``, ``down``), reconnects with backoff when the stream breaks (saying which
reports it holds, so a reconnect costs only what changed), and converges the database on them
in coalesced writes of what changed, level-triggered:

- a hypervisor seen for the first time is added, with the default overcommit ratios;
- size, free memory, domain counts and the VTEP (its underlay address) follow the reports; a
  hypervisor whose leaf is not OK is ``down`` (the scheduler skips it) and ``up`` again once it is;
- a hypervisor with a row but no report from a *ready* tree (a snapshot with ``ready``) is
  ``gone``: the tree no longer has it (restarted with fewer, or the host taken out). Its VMs
  keep their status and their claims (they are still in the database), and it is up or down
  again as soon as it reports. A ``removed`` hypervisor's reports are ignored: it stays removed;
- claims are recounted from the instances placed on each changed host, in one statement, when
  it is first written and then at most every ``RECOUNT_S``: placing and settling keep claims
  exact in the transactions that change instances (api/jobs/vm.py), so the recount only heals a
  lost release; recounting after every report made it part of every create's cost (issue 15);
- an instance with no job in flight takes its power state from the report (observed state
  wins; the database keeps the desired state). One touched in the last ``SETTLE_S`` is looked
  at again once it has settled. A domain missing from a live hypervisor changes nothing here:
  the converger (api/reconcile) defines it again where it was.

After each write ``on_change(hypervisors)`` names those up whose report changed or that came
up: the converger's keys.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, bindparam, func, insert, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from cloudland.client import RootClient, supersedes
from cloudland.errors import CloudLandError
from cloudland_api.services.hypervisors import LOST
from cloudland_api.models import INSTANCE, TERMINAL, Hypervisor, Instance, Job, utcnow
from cloudland_api.reconcile.vm import Domain
from cloudland_proto.v1 import envelope_pb2 as pb
from cloudland_proto.v1 import root_pb2

log = logging.getLogger(__name__)

# An instance touched this recently may not be in the reports yet (they follow an operation
# within ~0.1 s, heartbeats every second).
SETTLE_S = 10.0
OBSERVED = {"running": "running", "shutoff": "stopped", "crashed": "stopped", "paused": "running"}
COALESCE_S = 0.05     # changes that arrive together are written together
FILTER_MAX = 500      # up to this many hypervisors, instances are read by hypervisor; beyond, all
RETRY_MAX_S = 5.0     # the longest wait before connecting the stream again
RECOUNT_S = 10.0      # a changed hypervisor's claims are recounted at most this often
# A hypervisor row's columns that follow its reports (vtep: where its ports' VXLAN tunnels end;
# incarnation: its agent's start id, a new one is a restart: reconcile/net.py).
REPORTED = ("hostname", "cpus", "memory_mib", "free_memory_mib", "domains", "running_domains", "state", "vtep",
            "incarnation")


class Observer:
    """Reads the stream on one thread and writes the database on another; ``ready`` is set after
    the first write of a snapshot."""

    def __init__(self, write_sessions: sessionmaker[Session], root_endpoint: str, *, cpu_ratio: float = 4.0,
                 memory_ratio: float = 1.0, client: RootClient | None = None,
                 on_change: Callable[[set[int]], None] | None = None, coalesce_s: float = COALESCE_S,
                 recount_s: float = RECOUNT_S) -> None:
        self._sessions = write_sessions
        # ``client``: a stand-in for the root's client (tests of this layer alone).
        self._client = client or (RootClient(root_endpoint) if root_endpoint else None)
        self._ratios = (cpu_ratio, memory_ratio)
        self.on_change = on_change
        self._coalesce_s = coalesce_s
        self._recount_s = recount_s
        self.reports: dict[int, pb.HypervisorReport] = {}
        self.down: set[int] = set()
        self._domains: dict[int, dict[str, Domain]] = {}   # built from reports when asked for
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._dirty: set[int] = set()                      # hypervisors to write
        self._complete: set[int] | None = None             # a ready snapshot's reported set, to write
        self._revisit: dict[int, float] = {}               # hypervisor -> when to look again (settling)
        self._seen: dict[int, tuple[Any, ...]] = {}        # last written report fields per hypervisor
        self._recounted: dict[int, float] = {}             # hypervisor -> when its claims were last recounted
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.ready = threading.Event()
        self.snapshots = self.writes = 0

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        if self._client is None:
            return
        for target, name in ((self._read, "observer-stream"), (self._write, "observer-writer")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stopping.set()
        with self._wake:
            self._wake.notify_all()
        if self._client is not None:
            self._client.close()  # cancels the stream
        for thread in self._threads:
            thread.join(timeout=5)

    def _read(self) -> None:
        assert self._client is not None
        delay, warned = 0.2, False
        while not self._stopping.is_set():
            try:
                for event in self._client.watch(self._versions()):
                    self.apply(event)
                    delay, warned = 0.2, False
            except CloudLandError as exc:
                if not warned:  # once per outage, not every attempt
                    log.warning("event=watch_failed reason=%s", exc)
                    warned = True
            except Exception:
                if self._stopping.is_set():
                    return
                log.exception("event=watch_error")
            self._stopping.wait(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    def _write(self) -> None:
        while not self._stopping.is_set():
            with self._wake:
                self._wake.wait_for(self._due, timeout=1.0)
            if self._stopping.wait(self._coalesce_s):
                return
            try:
                self.flush()
            except Exception:
                log.exception("event=observe_write_failed")
                self._stopping.wait(1.0)

    def _due(self) -> bool:
        now = time.monotonic()
        return bool(self._stopping.is_set() or self._dirty or self._complete is not None
                    or any(t <= now for t in self._revisit.values()))

    # -- what the stream says -------------------------------------------------

    def _versions(self) -> list[root_pb2.ReportVersion]:
        with self._lock:
            return [root_pb2.ReportVersion(hypervisor=hv, incarnation=r.incarnation, generation=r.generation)
                    for hv, r in self.reports.items() if r.incarnation]

    def apply(self, event: root_pb2.WatchEvent) -> None:
        """Take one event of the stream into ``reports`` and ``down``; the writer writes it."""
        with self._wake:
            dirty = set()
            for report in event.reports:
                hv = report.hypervisor
                if supersedes(report, self.reports.get(hv)):
                    self.reports[hv] = report
                    self._domains.pop(hv, None)
                    dirty.add(hv)
            if event.snapshot:
                self.snapshots += 1
                down = set(event.down)
                dirty |= down ^ self.down
                self.down = down
                if event.ready:
                    self._complete = set(event.reported)
            else:
                self.down.update(event.down)
                self.down.difference_update(event.up)
                dirty.update(event.down, event.up)
            self._dirty |= dirty
            self._wake.notify()
        for peer in event.events:
            log.info("event=peer_%s node=[%d:%d) reason=%s", pb.PeerState.Name(peer.state).lower(),
                     peer.node.first_leaf, peer.node.end_leaf, peer.reason)

    def observed(self, hypervisors: Iterable[int]) -> dict[int, dict[str, Domain]]:
        """The converger's view: of ``hypervisors``, those up and reported, with their domains by uuid."""
        out: dict[int, dict[str, Domain]] = {}
        with self._lock:
            for hv in hypervisors:
                report = self.reports.get(hv)
                if report is None or hv in self.down:
                    continue
                domains = self._domains.get(hv)
                if domains is None:
                    domains = self._domains[hv] = {
                        vm.uuid: Domain(vm.name, vm.uuid, vm.state, vm.instance_id,
                                        tuple((d.device, d.volume_id, d.attachment_id) for d in vm.disks))
                        for vm in report.vms}
                out[hv] = domains
        return out

    def up(self) -> list[int]:
        """Every hypervisor reported and up now."""
        with self._lock:
            return [hv for hv in self.reports if hv not in self.down]

    # -- the database ---------------------------------------------------------

    def flush(self) -> set[int]:
        """Write what changed since the last flush; returns the hypervisors handed to ``on_change``."""
        with self._lock:
            now = time.monotonic()
            dirty = set(self._dirty)
            for hv, when in list(self._revisit.items()):
                if when <= now:
                    dirty.add(hv)
                    del self._revisit[hv]
            complete, self._complete, self._dirty = self._complete, None, set()
            if complete is not None:  # a ready snapshot: what it does not name is not in the tree
                for hv in set(self.reports) - complete:
                    del self.reports[hv]
                    self._domains.pop(hv, None)
            reports = [self.reports[hv] for hv in sorted(dirty) if hv in self.reports]
            down = set(self.down)
        if not dirty and complete is None:
            return set()
        due = self._due_recounts([r.hypervisor for r in reports])
        try:
            with self._sessions() as session:
                known: dict[int, str] = {hv: state for hv, state in
                                         session.execute(select(Hypervisor.id, Hypervisor.state))}
                live = [r for r in reports if known.get(r.hypervisor) != "removed"]
                self._hypervisors(session, live, down, known)
                if complete is not None:
                    self._gone(session, complete, known)
                self._recount_claims(session, [r.hypervisor for r in live if r.hypervisor in due])
                settling = self._observe_instances(session, live, down)
                session.commit()
        except Exception:
            with self._lock:  # written next time
                for hv in due:
                    self._recounted.pop(hv, None)
                self._dirty |= dirty
                if complete is not None and self._complete is None:
                    self._complete = complete
            raise
        self.writes += 1
        if complete is not None or self.snapshots:
            self.ready.set()
        with self._lock:
            later = time.monotonic() + SETTLE_S
            for hv in settling:
                self._revisit.setdefault(hv, later)
        changed = {r.hypervisor for r in live if r.hypervisor not in down}
        if changed and self.on_change is not None:
            self.on_change(changed)
        return changed

    def _due_recounts(self, hypervisors: list[int]) -> set[int]:
        """Of ``hypervisors`` (changed now), those whose claims were not recounted in the last
        ``recount_s``, marked recounted now. The others are looked at again once that has passed,
        so the last change of a burst is recounted too."""
        now = time.monotonic()
        due = set()
        with self._lock:
            for hv in hypervisors:
                last = self._recounted.get(hv)
                if last is None or now - last >= self._recount_s:
                    self._recounted[hv] = now
                    due.add(hv)
                else:
                    self._revisit.setdefault(hv, last + self._recount_s)
        return due

    def _gone(self, session: Session, reported: set[int], known: dict[int, str]) -> None:
        """Hypervisors with a row that a ready snapshot does not name become ``gone``."""
        missing = sorted(hv for hv, state in known.items() if hv not in reported and state not in LOST)
        if not missing:
            return
        # Conditional: a removal committed since ``known`` was read stays a removal.
        session.execute(update(Hypervisor).where(Hypervisor.id.in_(missing), Hypervisor.state.not_in(LOST))
                        .values(state="gone").execution_options(synchronize_session=False))
        for hv in missing:
            self._seen.pop(hv, None)  # its next report, if any, is written whatever it says
            self._recounted.pop(hv, None)  # and its claims recounted
            log.warning("event=hypervisor_gone hypervisor=%d was=%s", hv, known[hv])

    def _hypervisors(self, session: Session, reports: list[pb.HypervisorReport], down: set[int],
                     known: dict[int, str]) -> None:
        now = utcnow()
        added: list[dict[str, Any]] = []
        changed: list[dict[str, Any]] = []
        for report in reports:
            hv = report.hypervisor
            state = "down" if hv in down else "up"
            fields = (report.hostname, report.cpus, report.memory_kib // 1024, report.free_memory_kib // 1024,
                      report.domains, report.running_domains, state, report.vtep, report.incarnation)
            values: dict[str, Any] = dict(zip(REPORTED, fields))
            if hv not in known:
                added.append(values | {"id": hv, "cpu_ratio": self._ratios[0], "memory_ratio": self._ratios[1],
                                       "last_seen": now})
            elif self._seen.get(hv) != fields:
                changed.append(values | {"b_id": hv, "last_seen": now if state == "up" else None})
                if known[hv] != state:
                    log.warning("event=hypervisor_%s hypervisor=%d was=%s", state, hv, known[hv])
            self._seen[hv] = fields
        if added:  # one statement for thousands at the first snapshot
            session.execute(insert(Hypervisor), added)
            log.info("event=hypervisors_added count=%d", len(added))
        table = Hypervisor.__table__
        for seen, rows in ((True, [c for c in changed if c["last_seen"] is not None]),
                           (False, [c for c in changed if c["last_seen"] is None])):
            if not rows:
                continue
            # Conditional: a removal committed since ``known`` was read stays a removal. A down
            # host keeps when it was last seen up.
            names = (*REPORTED, *(("last_seen",) if seen else ()))
            stmt = (update(table).where(table.c.id == bindparam("b_id"), table.c.state != "removed")
                    .values({name: bindparam(name) for name in names}))
            session.execute(stmt, [{k: row[k] for k in ("b_id", *names)} for row in rows])

    @staticmethod
    def _recount_claims(session: Session, hypervisors: list[int]) -> None:
        """Claims = what the live instances placed on each of ``hypervisors`` hold, in one statement."""
        if not hypervisors:
            return
        holds = and_(Instance.hypervisor_id == Hypervisor.id, Instance.status != "deleted")
        # A resize in flight holds the growth it claimed at dispatch (api/jobs/vm.py) on top of the
        # instance's size, which changes only when it succeeds. Counted without it, a recount
        # between the two lost the growth for good (found by tests/chaos: "claims 5, holds 6").
        growing = and_(Job.kind == "vm", Job.action == "resize", Job.state.not_in(TERMINAL),
                       Job.subject_type == INSTANCE, Job.subject_id == Instance.id, holds)

        def held(size: Any, claimed: str) -> Any:
            own = select(func.coalesce(func.sum(size), 0)).where(holds).scalar_subquery()
            growth = (select(func.coalesce(func.sum(Job.args[claimed].as_integer()), 0))
                      .where(growing, Job.args[claimed].as_integer() > 0).scalar_subquery())
            return own + growth

        vcpus, memory = held(Instance.vcpus, "claimed_vcpus"), held(Instance.memory_mib, "claimed_memory_mib")
        which = Hypervisor.id.in_(hypervisors) if len(hypervisors) <= FILTER_MAX else Hypervisor.id.is_not(None)
        # Row locks first on PostgreSQL: a claim committed while we count waits or is counted.
        session.execute(select(Hypervisor.id).where(which).order_by(Hypervisor.id).with_for_update()).all()
        result = session.execute(
            update(Hypervisor)
            .where(which, or_(Hypervisor.vcpus_claimed != vcpus, Hypervisor.memory_claimed_mib != memory))
            .values(vcpus_claimed=vcpus, memory_claimed_mib=memory)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount:  # type: ignore[attr-defined]
            log.warning("event=claims_corrected hypervisors=%d", result.rowcount)  # type: ignore[attr-defined]

    @staticmethod
    def _observe_instances(session: Session, reports: list[pb.HypervisorReport], down: set[int]) -> set[int]:
        """Idle instances take their status from the reports: columns read, changed rows written.
        Returns the hypervisors with an instance that differs but has not settled yet.

        Reads tuples, not ORM objects: a snapshot of 10,000 hypervisors names 200,000 instances.
        """
        observed: dict[int, dict[str, str]] = {
            r.hypervisor: {vm.uuid: vm.state for vm in r.vms} for r in reports if r.hypervisor not in down}
        if not observed:
            return set()
        settled = Instance.updated_at < utcnow() - timedelta(seconds=SETTLE_S)
        query = (select(Instance.id, Instance.uuid, Instance.hypervisor_id, Instance.status, settled)
                 .where(Instance.job_id.is_(None), Instance.hypervisor_id.is_not(None),
                        Instance.status.in_(("running", "stopped", "error"))))
        if len(observed) <= FILTER_MAX:
            query = query.where(Instance.hypervisor_id.in_(list(observed)))
        changes: list[dict[str, Any]] = []
        settling: set[int] = set()
        for instance_id, vm_uuid, hypervisor, status, is_settled in session.execute(query):
            vms = observed.get(hypervisor)
            state = vms.get(vm_uuid) if vms is not None else None
            now = OBSERVED.get(state or "")
            if now is None or now == status:
                continue  # nothing known, or nothing new; a missing domain is the converger's
            if not is_settled:
                settling.add(hypervisor)
                continue
            log.info("event=instance_observed instance=%d hypervisor=%d was=%s now=%s", instance_id,
                     hypervisor, status, now)
            changes.append({"b_id": instance_id, "status": now})
        if changes:
            table = Instance.__table__
            # Conditional: a job that started meanwhile owns the instance; leave it alone.
            session.execute(update(table).where(table.c.id == bindparam("b_id"), table.c.job_id.is_(None))
                            .values(status=bindparam("status"), status_reason=None), changes)
        return settling
