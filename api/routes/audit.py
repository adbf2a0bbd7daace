"""``/api/v1/audit``: the audit trail (api/audit.py), for an organisation's admins (their
organisation's events) and operators (everyone's). Read-only: nothing in the API changes it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from cloudland_api.deps import CurrentUser, PageAfter, PageLimit, SessionDep
from cloudland_api.models import AuditEvent
from cloudland_api.policy import allow
from cloudland_api.schemas import MAX_ID, AuditEventList, AuditEventPublic
from cloudland_api.services import crud

router = APIRouter(tags=["audit"])


@router.get("/audit", **allow("audit_event", "read"))
def list_audit_events(
    session: SessionDep,
    caller: CurrentUser,
    limit: PageLimit = 50,
    after: PageAfter = None,
    username: Annotated[str | None, Query(min_length=1, max_length=64, description="Only this user's")] = None,
    project: Annotated[int | None, Query(ge=1, le=MAX_ID, description="Only requests acting in this project (id)")
                       ] = None,
    resource: Annotated[str | None, Query(pattern=r"^[a-z_]{1,32}(:[A-Za-z0-9._-]{1,64})?$", description=(
        "Only requests on this resource type (instance), or on one resource (instance:12)"))] = None,
) -> AuditEventList:
    """One page of the audit trail, newest first: the organisation's events, or (operators) every
    organisation's and the sign-ins that named none."""
    query = select(AuditEvent)
    if not caller.operator:
        query = query.where(AuditEvent.org_id == caller.org_id)
    if username is not None:
        query = query.where(AuditEvent.username == username)
    if project is not None:
        query = query.where(AuditEvent.project_id == project)
    if resource is not None:
        kind, _, resource_id = resource.partition(":")
        query = query.where(AuditEvent.resource_type == kind)
        if resource_id:
            query = query.where(AuditEvent.resource_id == resource_id)
    rows, next_after = crud.keyset(session, query, [AuditEvent.id], limit, after, newest_first=True)
    return AuditEventList(items=[AuditEventPublic.model_validate(r) for r in rows], limit=limit,
                          next_after=next_after)
