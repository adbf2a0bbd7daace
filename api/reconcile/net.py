"""Converging networks, one hypervisor at a time: an agent that (re)started gets its whole state.

An agent's report carries the incarnation of its process (proto/README.md §6.1); the observer
stores it in ``hypervisors.incarnation``. When it differs from ``net_incarnation``, the one that
was last sent a full ``net.sync``, the agent has started since: it gets a ``full`` sync of every
VPC it holds (api/jobs/net.py), read when the job is sent, and ``net_incarnation`` is set in the
same transaction, so each start costs one sync. The agent then diffs that against the kernel
and changes only what is wrong (proto/v1/network.proto ``NetSyncRequest``). Hypervisors that
hold no VPC are not sent one: there is nothing of the control plane's for them to hold.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloudland.client import new_job_id
from cloudland_api.models import HYPERVISOR, Hypervisor, Job, JobState, Organisation, Port
from cloudland_api.reconcile.vm import SYSTEM_BATCH

log = logging.getLogger(__name__)


def sync_hypervisors(session: Session, hypervisors: Iterable[int]) -> list[Job]:
    """A ``full`` net sync job for each of ``hypervisors`` that is up, started since its last one,
    and holds a port (added to ``session``; the caller commits and submits)."""
    wanted = sorted(set(hypervisors))
    if not wanted:
        return []
    restarted = list(session.scalars(select(Hypervisor).where(
        Hypervisor.id.in_(wanted), Hypervisor.state == "up", Hypervisor.incarnation != "",
        Hypervisor.incarnation != Hypervisor.net_incarnation)))
    if not restarted:
        return []
    holding = set(session.scalars(select(Port.hypervisor_id).distinct().where(
        Port.hypervisor_id.in_([h.id for h in restarted]))))
    operator = session.scalar(select(Organisation.id).where(Organisation.operator).order_by(Organisation.id))
    jobs: list[Job] = []
    batch = f"{SYSTEM_BATCH}-{new_job_id()[:12]}"
    for hypervisor in restarted:
        hypervisor.net_incarnation = hypervisor.incarnation
        if hypervisor.id not in holding or operator is None:
            continue
        jobs.append(Job(id=new_job_id(), org_id=operator, user_id=None, batch=batch, kind="net", action="full",
                        subject_type=HYPERVISOR, subject_id=hypervisor.id, hypervisor_id=hypervisor.id, args={},
                        state=JobState.pending, attempts=0))
        log.info("event=net_full_sync hypervisor=%d incarnation=%s", hypervisor.id, hypervisor.incarnation)
    session.add_all(jobs)
    return jobs
