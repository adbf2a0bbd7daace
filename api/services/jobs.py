"""Jobs as their organisation reads them: lists (by batch, state, instance) and one job.

Jobs are made by the services that change a resource and run by the engine (api/jobs/);
this module only reads them, tenant-scoped.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import RowMapping, bindparam, case, func
from sqlalchemy.orm import Session

from cloudland.errors import NotFound
from cloudland_api.models import INSTANCE, Job, JobState
from cloudland_api.schemas import JobPublic
from cloudland_api.services import crud
from cloudland_api.services.identity import Caller


def batch_counts(session: Session, caller: Caller, batch: str) -> dict[str, int]:
    """How many of the jobs of ``batch`` are in each state."""
    rows = session.execute(
        crud.scoped(Job, caller).where(Job.batch == batch).with_only_columns(Job.state, func.count()).group_by(Job.state)
    ).all()
    return {s.value: 0 for s in JobState} | {JobState(s).value: n for s, n in rows}


def list_jobs(
    session: Session, caller: Caller, limit: int, after: str | None = None, batch: str | None = None,
    state: str | None = None, instance: int | None = None,
) -> tuple[list[RowMapping], str | None, dict[str, int] | None]:
    """One page of jobs, newest first (by creation, then id: ids are random hex), the next page's
    cursor, and with ``batch`` how many of its jobs are in each state; the jobs as rows of
    JobPublic's columns (crud "hot reads as rows")."""
    table = Job.__table__

    def where() -> list[Any]:
        conditions = []
        if batch:
            conditions.append(table.c.batch == bindparam("batch"))
        if state:
            conditions.append(table.c.state == bindparam("state"))
        if instance is not None:
            conditions += [table.c.subject_type == INSTANCE, table.c.subject_id == bindparam("instance")]
        return conditions

    instance_id = case((table.c.subject_type == INSTANCE, table.c.subject_id), else_=None).label("instance_id")
    rows, next_after = crud.page_rows(
        session, Job, JobPublic, caller, limit, after, (bool(batch), bool(state), instance is not None), where,
        {"batch": batch, "state": JobState(state) if state else None, "instance": instance},
        keys=("created_at", "id"), extra=(instance_id,), newest_first=True)
    return rows, next_after, batch_counts(session, caller, batch) if batch else None


def get_job(session: Session, caller: Caller, job_id: str) -> Job:
    """The caller's organisation's job ``job_id``, or NotFound."""
    job = session.scalar(crud.scoped(Job, caller).where(Job.id == job_id))
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job
