"""Jobs as their organisation reads them: lists (by batch, state, instance) and one job.

Jobs are made by the services that change a resource and run by the engine (api/jobs/);
this module only reads them, tenant-scoped.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from cloudland.errors import NotFound
from cloudland_api.models import INSTANCE, Job, JobState
from cloudland_api.services.identity import Caller


def _job_scope(caller: Caller, batch: str | None, state: str | None, instance: int | None) -> Select[Any]:
    query = select(Job).where(Job.org_id == caller.org_id)
    if batch:
        query = query.where(Job.batch == batch)
    if state:
        query = query.where(Job.state == JobState(state))
    if instance is not None:
        query = query.where(Job.subject_type == INSTANCE, Job.subject_id == instance)
    return query


def list_jobs(
    session: Session, caller: Caller, *, limit: int, offset: int, batch: str | None = None,
    state: str | None = None, instance: int | None = None,
) -> tuple[list[Job], dict[str, int] | None]:
    """One page of jobs, newest first; with ``batch``, also how many of its jobs are in each state."""
    query = _job_scope(caller, batch, state, instance)
    jobs = list(session.scalars(query.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)))
    counts = None
    if batch:
        rows = session.execute(
            select(Job.state, func.count()).where(Job.org_id == caller.org_id, Job.batch == batch).group_by(Job.state)
        ).all()
        counts = {s.value: 0 for s in JobState} | {JobState(s).value: n for s, n in rows}
    return jobs, counts


def get_job(session: Session, caller: Caller, job_id: str) -> Job:
    """The caller's organisation's job ``job_id``, or NotFound."""
    job = session.scalar(select(Job).where(Job.id == job_id, Job.org_id == caller.org_id))
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job
