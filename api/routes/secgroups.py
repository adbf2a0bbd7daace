"""``/api/v1/security-groups``: the project's security groups and their rules (issue 12)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Path, status
from sqlalchemy.orm import Session

from cloudland_api.deps import CurrentUser, PageAfter, PageLimit, SessionDep, SubmitDep
from cloudland_api.jobs.kinds import follow_ups
from cloudland_api.models import SecurityGroup
from cloudland_api.policy import allow
from cloudland_api.schemas import (
    MAX_ID, ErrorResponse, Ref, RuleCreate, RulePublic, SecurityGroupCreate, SecurityGroupList, SecurityGroupPublic
)
from cloudland_api.services import secgroups

router = APIRouter(prefix="/security-groups", tags=["networks"],
                   responses={401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}})
RuleId = Annotated[int, Path(ge=1, le=MAX_ID, description="Rule id")]
_CHANGES = {400: {"model": ErrorResponse}, 403: {"model": ErrorResponse}, 409: {"model": ErrorResponse}}


def _public(session: Session, groups: Sequence[SecurityGroup]) -> list[SecurityGroupPublic]:
    rules = secgroups.rules_of(session, [g.id for g in groups])
    return [SecurityGroupPublic(
        id=g.id, name=g.name, description=g.description, is_default=g.is_default, created_at=g.created_at,
        rules=[RulePublic(id=r.id, direction=r.direction, protocol=r.protocol, port_min=r.port_min,
                          port_max=r.port_max, remote_cidr=r.remote_cidr, remote_group_id=r.remote_group_id)
               for r in rules[g.id]]) for g in groups]


@router.get("", **allow("security_group", "read"))
def list_groups(session: SessionDep, caller: CurrentUser, limit: PageLimit = 50,
                after: PageAfter = None) -> SecurityGroupList:
    """One page of the project's security groups (its default group among them), by id."""
    rows, next_after = secgroups.list_groups(session, caller, limit, after)
    return SecurityGroupList(items=_public(session, rows), limit=limit, next_after=next_after)


@router.post("", status_code=status.HTTP_201_CREATED, **allow("security_group", "create", responses=_CHANGES))
def create_group(body: SecurityGroupCreate, session: SessionDep, caller: CurrentUser) -> SecurityGroupPublic:
    """Create a security group with no rule (admin or member)."""
    return _public(session, [secgroups.create_group(session, caller, body)])[0]


@router.get("/{group}", **allow("security_group", "read"))
def get_group(group: Ref, session: SessionDep, caller: CurrentUser) -> SecurityGroupPublic:
    """One security group, by id or name, with its rules."""
    return _public(session, [secgroups.get_group(session, caller, group)])[0]


@router.delete("/{group}", status_code=status.HTTP_204_NO_CONTENT, **allow("security_group", "delete",
                                                                            responses=_CHANGES))
def delete_group(group: Ref, session: SessionDep, caller: CurrentUser) -> None:
    """Delete a security group nothing uses (admin); 409 naming a port in it or a rule naming it."""
    secgroups.delete_group(session, caller, group)


@router.post("/{group}/rules", status_code=status.HTTP_201_CREATED,
             **allow("security_group", "update", responses=_CHANGES))
def add_rule(group: Ref, body: RuleCreate, session: SessionDep, caller: CurrentUser, submit: SubmitDep) -> RulePublic:
    """Add a rule to a group (admin or member); the hypervisors of the project's VPCs get it."""
    rule = secgroups.add_rule(session, caller, group, body)
    submit(follow_ups(session))
    return RulePublic(id=rule.id, direction=rule.direction, protocol=rule.protocol, port_min=rule.port_min,
                      port_max=rule.port_max, remote_cidr=rule.remote_cidr, remote_group_id=rule.remote_group_id)


@router.delete("/{group}/rules/{rule_id}", status_code=status.HTTP_204_NO_CONTENT,
               **allow("security_group", "update", responses=_CHANGES))
def delete_rule(group: Ref, rule_id: RuleId, session: SessionDep, caller: CurrentUser, submit: SubmitDep) -> None:
    """Delete a rule (admin or member): new flows it allowed stop; established ones go on."""
    secgroups.delete_rule(session, caller, group, rule_id)
    submit(follow_ups(session))
