"""Converging VMs, one hypervisor at a time: what the database wants there against what the
hypervisor reports holding.

- An instance that should be running (or stopped) whose domain is missing on a hypervisor that is
  up is defined and started again on the same hypervisor (a ``recover`` job: ``vm.create`` with its
  spec, which on a real hypervisor finds the guest's own disk and config drive and boots from
  them); a stopped one is stopped again after (a ``stop`` job, queued behind the recover by the
  engine's one-job-per-subject rule).
- A domain that no instance placed on that hypervisor owns is reported. If it carries CloudLand's
  metadata (``instance_id``) it is removed (a ``purge`` job on that instance); one without is
  someone else's and is left alone.

Instances with a job in flight, or touched in the last ``SETTLE_S`` (a report may not show them
yet), are not judged now but looked at again later.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloudland.client import new_job_id
from cloudland_api.models import INSTANCE, Instance, Job, JobState, utcnow

log = logging.getLogger(__name__)

SETTLE_S = 10.0  # an instance touched this recently may not be in the reports yet (heartbeats ~1 s)
SYSTEM_BATCH = "reconcile"


@dataclass(frozen=True)
class Domain:
    """A domain as a hypervisor reports it."""

    name: str
    uuid: str
    state: str
    instance_id: int = 0  # from CloudLand's metadata in the domain; 0: none (not ours)
    # Its disks as (device, volume id, attachment id), from VmState.disks (reconcile/volume.py).
    disks: tuple[tuple[str, int, int], ...] = ()


@dataclass
class Verdict:
    """What one pass over some hypervisors did: jobs to submit, and whether to look again later."""

    jobs: list[Job]
    again: set[int]      # hypervisors with instances not judged yet (busy or settling)
    unmanaged: list[tuple[int, str]]  # (hypervisor, domain name) that no row owns and not ours


def sync_hypervisors(session: Session, observed: Mapping[int, Mapping[str, Domain]],
                     now: datetime | None = None) -> Verdict:
    """Converge the instances placed on ``observed``'s hypervisors (each up, with its domains by
    uuid) with what those hold. Adds the jobs to ``session``; the caller commits and submits."""
    now = now or utcnow()
    settled_before = now - timedelta(seconds=SETTLE_S)
    verdict = Verdict([], set(), [])
    if not observed:
        return verdict
    # Columns, not ORM objects: the periodic resync reads every instance placed anywhere
    # (200,000 at 10,000 hypervisors); only the few to act on are loaded whole.
    placed: dict[int, list[Any]] = {hv: [] for hv in observed}
    for row in session.execute(select(Instance.id, Instance.uuid, Instance.hypervisor_id, Instance.status,
                                      Instance.job_id, Instance.updated_at)
                               .where(Instance.hypervisor_id.in_(list(observed)), Instance.status != "deleted")):
        placed[row.hypervisor_id].append(row)
    for hv, domains in observed.items():
        owned = {i.uuid for i in placed[hv]}
        for row in placed[hv]:
            if row.uuid in domains or row.status not in ("running", "stopped"):
                continue
            if row.job_id is not None or row.updated_at > settled_before:
                verdict.again.add(hv)
                continue
            instance = session.get(Instance, row.id)
            if instance is not None:
                verdict.jobs += _recover(session, instance, hv)
        for uuid, domain in domains.items():
            if uuid in owned or not domain.name.startswith("cl-"):
                continue
            if domain.instance_id:
                job = _purge(session, hv, domain)
                if job is not None:
                    verdict.jobs.append(job)
            else:
                verdict.unmanaged.append((hv, domain.name))
    return verdict


def _job(instance_id: int, org_id: int, action: str, args: dict[str, object], hv: int) -> Job:
    return Job(id=new_job_id(), org_id=org_id, user_id=None, batch=f"{SYSTEM_BATCH}-{new_job_id()[:12]}",
               kind="vm", action=action, subject_type=INSTANCE, subject_id=instance_id, hypervisor_id=hv,
               args=args, state=JobState.pending, attempts=0)


def _recover(session: Session, instance: Instance, hv: int) -> list[Job]:
    power = instance.status
    recover = _job(instance.id, instance.org_id, "recover", {"power": power}, hv)
    made = [recover]
    if power == "stopped":
        made.append(_job(instance.id, instance.org_id, "stop", {"force": True}, hv))
    session.add_all(made)
    instance.job_id = recover.id
    instance.status_reason = f"recovering: domain {instance.domain_name} missing on hypervisor {hv}"
    log.warning("event=instance_recover instance=%d hypervisor=%d power=%s job=%s", instance.id, hv, power,
                recover.id)
    return made


def _purge(session: Session, hv: int, domain: Domain) -> Job | None:
    """A delete of a domain CloudLand made whose instance no longer lives there."""
    instance = session.get(Instance, domain.instance_id)
    if instance is None:
        log.warning("event=domain_orphaned hypervisor=%d domain=%s instance=%d note=no such instance: left alone",
                    hv, domain.name, domain.instance_id)
        return None
    if instance.uuid != domain.uuid:
        log.warning("event=domain_orphaned hypervisor=%d domain=%s instance=%d note=uuid differs: left alone",
                    hv, domain.name, domain.instance_id)
        return None
    busy = session.scalar(select(Job.id).where(Job.subject_type == INSTANCE, Job.subject_id == instance.id,
                                               Job.action == "purge", Job.hypervisor_id == hv,
                                               Job.state.in_((JobState.pending, JobState.dispatched))).limit(1))
    if busy is not None:
        return None  # already being removed
    job = _job(instance.id, instance.org_id, "purge", {"name": domain.name, "uuid": domain.uuid}, hv)
    session.add(job)
    log.warning("event=domain_orphaned hypervisor=%d domain=%s instance=%d note=removing job=%s", hv, domain.name,
                instance.id, job.id)
    return job
