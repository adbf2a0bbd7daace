"""``/api/v1/audit``: the audit trail (api/audit.py), for an organisation's admins (their
organisation's events) and operators (everyone's). Read-only: nothing in the API changes it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from cloudland_api.deps import CurrentUser, PageAfter, PageLimit, SessionDep
from cloudland_api.models import AuditEvent
from cloudland_api.policy import allow
from cloudland_api.schemas import AuditEventList, AuditEventPublic
from cloudland_api.services import crud

router = APIRouter(tags=["audit"])


@router.get("/audit", **allow("audit_event", "read"))
def list_audit_events(
    session: SessionDep,
    caller: CurrentUser,
    limit: PageLimit = 50,
    after: PageAfter = None,
    username: Annotated[str | None, Query(min_length=1, max_length=64, description="Only this user's")] = None,
) -> AuditEventList:
    """One page of the audit trail, newest first: the organisation's events, or (operators) every
    organisation's and the sign-ins that named none."""
    query = select(AuditEvent)
    if not caller.operator:
        query = query.where(AuditEvent.org_id == caller.org_id)
    if username is not None:
        query = query.where(AuditEvent.username == username)
    rows, next_after = crud.keyset(session, query, [AuditEvent.id], limit, after, newest_first=True)
    return AuditEventList(items=[AuditEventPublic.model_validate(r) for r in rows], limit=limit,
                          next_after=next_after)
