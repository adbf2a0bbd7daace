"""Jobs as their organisation reads them: lists (by batch, state, instance) and one job.

Jobs are made by the services that change a resource and run by the engine (api/jobs/);
this module only reads them, tenant-scoped.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from cloudland.errors import NotFound
from cloudland_api.models import INSTANCE, Job, JobState
from cloudland_api.services import crud
from cloudland_api.services.identity import Caller


def _job_filters(batch: str | None, state: str | None, instance: int | None) -> list[ColumnElement[bool]]:
    where = []
    if batch:
        where.append(Job.batch == batch)
    if state:
        where.append(Job.state == JobState(state))
    if instance is not None:
        where += [Job.subject_type == INSTANCE, Job.subject_id == instance]
    return where


def list_jobs(
    session: Session, caller: Caller, *, limit: int, after: str | None = None, batch: str | None = None,
    state: str | None = None, instance: int | None = None,
) -> tuple[list[Job], str | None, dict[str, int] | None]:
    """One page of jobs, newest first (by creation, then id: ids are random hex), the next page's
    cursor, and with ``batch`` how many of its jobs are in each state."""
    jobs, next_after = crud.page(session, Job, caller, limit, after, *_job_filters(batch, state, instance),
                                 keys=[Job.created_at, Job.id], newest_first=True)
    counts = None
    if batch:
        rows = session.execute(
            crud.scoped(Job, caller).where(Job.batch == batch).with_only_columns(Job.state, func.count()).group_by(Job.state)
        ).all()
        counts = {s.value: 0 for s in JobState} | {JobState(s).value: n for s, n in rows}
    return jobs, next_after, counts


def get_job(session: Session, caller: Caller, job_id: str) -> Job:
    """The caller's organisation's job ``job_id``, or NotFound."""
    job = session.scalar(crud.scoped(Job, caller).where(Job.id == job_id))
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job
