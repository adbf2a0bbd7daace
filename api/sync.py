"""The reconciler: hypervisors and observed VM state from the tree's reports.

Every ``sync_interval_s`` it reads the root's Health (every hypervisor's latest report,
and every leaf's state) and converges the database on it, level-triggered:

- a hypervisor seen for the first time is added, with the default overcommit ratios;
- size, free memory and domain counts follow the reports; a hypervisor whose leaf is
  not OK is ``down`` (the scheduler skips it) and ``up`` again once it is;
- a hypervisor with a row but no report from a *ready* tree is ``gone``: the tree no
  longer has it (restarted with fewer, or the host taken out). Its VMs keep their status
  and their claims (they are still in the database), and it is up or down again as soon
  as it reports. A ``removed`` hypervisor's reports are ignored: it stays removed;
- claims are recounted from the instances placed on each host, in one statement;
- an instance with no job in flight takes its power state from the report, or becomes
  ``error`` when its domain is missing from its hypervisor (observed state wins; the
  database keeps the desired state).
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from cloudland.client import RootClient
from cloudland.errors import CloudLandError
from cloudland_api.services.hypervisors import LOST
from cloudland_api.models import Hypervisor, Instance, utcnow
from cloudland_proto.v1 import envelope_pb2 as pb
from cloudland_proto.v1 import root_pb2

log = logging.getLogger(__name__)

# An instance touched this recently may not be in the reports yet (heartbeats are ~1 s).
SETTLE_S = 10.0
OBSERVED = {"running": "running", "shutoff": "stopped", "crashed": "stopped", "paused": "running"}


def complete_build(before: root_pb2.TopologyReply, after: root_pb2.TopologyReply) -> bool:
    """True when the Health read between these two Topology replies holds every hypervisor the
    tree has: both say ready, and of the same build.

    Ready means every rank's hello, which carries its inventory, is in, and the root keeps a
    report per hypervisor from then on (a lost leaf's stays, so it is ``down``, not ``gone``).
    A root restarted between the reads (build_seconds differs) or still building could answer
    with part of the reports, and the rest would wrongly be taken for gone.
    """
    return before.ready and after.ready and before.build_seconds == after.build_seconds


def down_hypervisors(health: root_pb2.HealthReply, per_leaf: int) -> set[int]:
    """Hypervisors whose leaf rank is not OK or SLOW (lost, or still starting)."""
    down: set[int] = set()
    for peer in health.peers:
        if not peer.relay and peer.state not in (pb.PEER_OK, pb.PEER_SLOW):
            down.update(range(peer.node.first_leaf * per_leaf, peer.node.end_leaf * per_leaf))
    return down


class Reconciler:
    """Runs ``sync_once`` every ``interval_s`` on a thread; ``ready`` is set after the first success."""

    def __init__(self, write_sessions: sessionmaker[Session], root_endpoint: str, *, interval_s: float = 2.0,
                 cpu_ratio: float = 4.0, memory_ratio: float = 1.0, client: RootClient | None = None) -> None:
        self._sessions = write_sessions
        # ``client``: a stand-in for the root's client (tests of this layer alone).
        self._client = client or (RootClient(root_endpoint) if root_endpoint else None)
        self._interval_s = interval_s
        self._ratios = (cpu_ratio, memory_ratio)
        self._seen: dict[int, tuple[Any, ...]] = {}  # last written report fields per hypervisor
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.ready = threading.Event()

    def start(self) -> None:
        if self._client is None:
            return
        self._thread = threading.Thread(target=self._loop, name="reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._client is not None:
            self._client.close()

    def _loop(self) -> None:
        warned = False
        while not self._stopping.is_set():
            try:
                self.sync_once()
                self.ready.set()
                warned = False
            except CloudLandError as exc:
                if not warned:  # once per outage, not every interval
                    log.warning("event=sync_failed reason=%s", exc)
                    warned = True
            except Exception:
                log.exception("event=sync_error")
            self._stopping.wait(self._interval_s)

    def sync_once(self) -> None:
        """Read the tree once and converge the database on it."""
        assert self._client is not None
        # The topology every time: a tree restarted with another shape has another per_leaf.
        before = self._client.topology()
        health = self._client.health(reports=True)
        # Only a reply known to be complete makes hypervisors gone (complete_build); the second
        # Topology is asked only when the first says ready.
        complete = before.ready and complete_build(before, self._client.topology())
        down = down_hypervisors(health, before.per_leaf or 1)
        with self._sessions() as session:
            rows = session.execute(select(Hypervisor.id, Hypervisor.state))
            known: dict[int, str] = {hv: state for hv, state in rows}
            reports = [r for r in health.reports if known.get(r.hypervisor) != "removed"]
            self._hypervisors(session, reports, down, known)
            if complete:
                self._gone(session, {r.hypervisor for r in health.reports}, known)
            self._recount_claims(session)
            self._observe_instances(session, reports, down)
            session.commit()

    def _gone(self, session: Session, reported: set[int], known: dict[int, str]) -> None:
        """Hypervisors with a row that a complete Health reply has no report of become ``gone``."""
        missing = sorted(hv for hv, state in known.items() if hv not in reported and state not in LOST)
        if not missing:
            return
        # Conditional: a removal committed since ``known`` was read stays a removal.
        session.execute(update(Hypervisor).where(Hypervisor.id.in_(missing), Hypervisor.state.not_in(LOST))
                        .values(state="gone").execution_options(synchronize_session=False))
        for hv in missing:
            self._seen.pop(hv, None)  # its next report, if any, is written whatever it says
            log.warning("event=hypervisor_gone hypervisor=%d was=%s", hv, known[hv])

    def _hypervisors(self, session: Session, reports: Any, down: set[int], known: dict[int, str]) -> None:
        now = utcnow()
        added = 0
        for report in reports:
            hv = report.hypervisor
            state = "down" if hv in down else "up"
            fields = (report.hostname, report.cpus, report.memory_kib // 1024, report.free_memory_kib // 1024,
                      report.domains, report.running_domains, state)
            if hv not in known:
                session.add(Hypervisor(id=hv, hostname=fields[0], cpus=fields[1], memory_mib=fields[2],
                                       free_memory_mib=fields[3], domains=fields[4], running_domains=fields[5],
                                       state=state, cpu_ratio=self._ratios[0], memory_ratio=self._ratios[1],
                                       last_seen=now))
                added += 1
            elif self._seen.get(hv) != fields:
                values: dict[str, Any] = dict(zip(
                    ("hostname", "cpus", "memory_mib", "free_memory_mib", "domains", "running_domains", "state"),
                    fields))
                if state == "up":
                    values["last_seen"] = now
                # Conditional: a removal committed since ``known`` was read stays a removal.
                session.execute(update(Hypervisor).where(Hypervisor.id == hv, Hypervisor.state != "removed")
                                .values(**values))
                if known[hv] != state:
                    log.warning("event=hypervisor_%s hypervisor=%d was=%s", state, hv, known[hv])
            self._seen[hv] = fields
        if added:
            log.info("event=hypervisors_added count=%d", added)

    @staticmethod
    def _recount_claims(session: Session) -> None:
        """Claims = what the live instances placed on each host hold, in one statement."""
        holds = and_(Instance.hypervisor_id == Hypervisor.id, Instance.status != "deleted")
        vcpus = select(func.coalesce(func.sum(Instance.vcpus), 0)).where(holds).scalar_subquery()
        memory = select(func.coalesce(func.sum(Instance.memory_mib), 0)).where(holds).scalar_subquery()
        # Row locks first on PostgreSQL: a claim committed while we count waits or is counted.
        session.execute(select(Hypervisor.id).order_by(Hypervisor.id).with_for_update()).all()
        result = session.execute(
            update(Hypervisor)
            .where(or_(Hypervisor.vcpus_claimed != vcpus, Hypervisor.memory_claimed_mib != memory))
            .values(vcpus_claimed=vcpus, memory_claimed_mib=memory)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount:  # type: ignore[attr-defined]
            log.warning("event=claims_corrected hypervisors=%d", result.rowcount)  # type: ignore[attr-defined]

    @staticmethod
    def _observe_instances(session: Session, reports: Any, down: set[int]) -> None:
        """Idle instances take their status from the reports: columns read, changed rows written.

        Reads tuples, not ORM objects: at 100,000 instances this runs every interval.
        """
        observed: dict[int, dict[str, str]] = {
            r.hypervisor: {vm.uuid: vm.state for vm in r.vms} for r in reports if r.hypervisor not in down}
        settled_before = utcnow() - timedelta(seconds=SETTLE_S)
        idle = session.execute(
            select(Instance.id, Instance.uuid, Instance.hypervisor_id, Instance.status)
            .where(Instance.job_id.is_(None), Instance.hypervisor_id.is_not(None),
                   Instance.status.in_(("running", "stopped", "error")), Instance.updated_at < settled_before)
        )
        changes: list[dict[str, Any]] = []
        for instance_id, vm_uuid, hypervisor, status in idle:
            vms = observed.get(hypervisor)
            if vms is None:
                continue  # host down or not reported: nothing is known
            state = vms.get(vm_uuid)
            if state is None:
                if status != "error":
                    reason = f"domain cl-{vm_uuid} missing on hypervisor {hypervisor}"
                    changes.append({"id": instance_id, "status": "error", "status_reason": reason})
                    log.warning("event=instance_missing instance=%d hypervisor=%d", instance_id, hypervisor)
                continue
            now = OBSERVED.get(state)
            if now is not None and now != status:
                log.info("event=instance_observed instance=%d hypervisor=%d was=%s now=%s", instance_id,
                         hypervisor, status, now)
                changes.append({"id": instance_id, "status": now, "status_reason": None})
        for change in changes:
            # Conditional: a job that started meanwhile owns the instance; leave it alone.
            session.execute(
                update(Instance).where(Instance.id == change["id"], Instance.job_id.is_(None))
                .values(status=change["status"], status_reason=change["status_reason"])
                .execution_options(synchronize_session=False)
            )
