"""``/api/v1/jobs``: what each change to an instance became, and a way to wait for it."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, Path, Query
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from cloudland_api import rowjson
from cloudland_api.services import jobs as job_records
from cloudland_api.deps import CurrentUser, PageAfter, PageLimit, SessionDep, read
from cloudland_api.policy import allow
from cloudland_api.models import TERMINAL, Job
from cloudland_api.schemas import MAX_ID, ErrorResponse, JobList, JobPublic, JobStateName
from cloudland_api.services.identity import Caller

router = APIRouter(
    prefix="/jobs",
    tags=["jobs"],
    responses={401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}},
)
JobId = Annotated[str, Path(min_length=1, max_length=32, pattern=r"^[0-9a-f]+$", description="Job id")]
# A request's batch is hex; the reconciler's are ``reconcile-<hex>`` (api/reconcile/vm.py).
BatchId = Annotated[str | None, Query(min_length=1, max_length=32, pattern=r"^(reconcile-)?[0-9a-f]+$")]
MAX_WAIT_S = 60.0
POLL_S = 0.1


@router.get("", response_model=JobList, **allow("job", "read"))
async def list_jobs(
    request: Request,
    caller: CurrentUser,
    limit: PageLimit = 50,
    after: PageAfter = None,
    batch: BatchId = None,
    state: Annotated[JobStateName | None, Query()] = None,
    instance: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
) -> Response:
    """One page of the organisation's jobs, newest first; with ``batch``, ``counts`` per state."""
    jobs, next_after, counts = await read(request, job_records.list_jobs, caller, limit, after, batch, state, instance)
    return rowjson.page(JobList, jobs, limit=limit, next_after=next_after, counts=counts)


def _read(session: Session, caller: Caller, job_id: str) -> Job:
    session.rollback()  # a new snapshot each time: see what the dispatcher committed since
    return job_records.get_job(session, caller, job_id)


@router.get("/{job_id}", **allow("job", "read"))
async def get_job(
    job_id: JobId,
    session: SessionDep,
    caller: CurrentUser,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="Seconds to wait for a terminal state")] = 0,
) -> JobPublic:
    """One job; with ``wait``, answers as soon as it is terminal or after ``wait`` seconds."""
    deadline = time.monotonic() + wait
    job = await run_in_threadpool(_read, session, caller, job_id)
    while job.state not in TERMINAL and time.monotonic() < deadline:
        await asyncio.sleep(POLL_S)
        job = await run_in_threadpool(_read, session, caller, job_id)
    return JobPublic.model_validate(job)
