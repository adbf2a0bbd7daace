"""``/api/v1/groups``: an organisation's groups of users, their members and the roles they hold
on the organisation and on its projects (services/groups.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status
from sqlalchemy.orm import Session

from cloudland_api.deps import CurrentUser, PageAfter, PageLimit, SessionDep
from cloudland_api.models import Group, Role
from cloudland_api.policy import allow
from cloudland_api.schemas import (
    MAX_ID, ErrorResponse, GroupCreate, GroupList, GroupMemberPublic, GroupProjectRolePublic, GroupPublic, GroupRole
)
from cloudland_api.services import groups

router = APIRouter(prefix="/groups", tags=["groups"], responses={404: {"model": ErrorResponse}})
GroupId = Annotated[int, Path(ge=1, le=MAX_ID, description="Group id")]
UserId = Annotated[int, Path(ge=1, le=MAX_ID, description="User id")]
ProjectId = Annotated[int, Path(ge=1, le=MAX_ID, description="Project id")]


def group_public(session: Session | None, group: Group) -> GroupPublic:
    """The group; with ``session``, its members and project roles too."""
    public = GroupPublic(id=group.id, name=group.name, role=group.role, created_at=group.created_at)
    if session is not None:
        public.members = [GroupMemberPublic(user_id=u, username=n) for u, n in groups.members(session, group)]
        public.projects = [GroupProjectRolePublic(project_id=p, project=n, role=r)
                           for p, n, r in groups.project_roles(session, group)]
    return public


@router.get("", **allow("group", "read"))
def list_groups(session: SessionDep, caller: CurrentUser, limit: PageLimit = 50, after: PageAfter = None) -> GroupList:
    """One page of the organisation's groups, by id."""
    rows, next_after = groups.page(session, caller, limit, after)
    return GroupList(items=[group_public(None, g) for g in rows], limit=limit, next_after=next_after)


@router.post("", status_code=status.HTTP_201_CREATED,
             **allow("group", "create", responses={409: {"model": ErrorResponse}}))
def create_group(body: GroupCreate, session: SessionDep, caller: CurrentUser) -> GroupPublic:
    """Create a group, with a role on the organisation if ``role`` is given."""
    return group_public(session, groups.create(session, caller, body.name, Role(body.role) if body.role else None))


@router.get("/{group_id}", **allow("group", "read"))
def get_group(group_id: GroupId, session: SessionDep, caller: CurrentUser) -> GroupPublic:
    """One group, with its members and its roles on projects."""
    return group_public(session, groups.get(session, caller, group_id))


@router.delete("/{group_id}", status_code=status.HTTP_204_NO_CONTENT, **allow("group", "delete"))
def delete_group(group_id: GroupId, session: SessionDep, caller: CurrentUser) -> None:
    """Delete a group: its members lose the roles it gave them."""
    groups.delete_group(session, caller, group_id)


@router.put("/{group_id}/members/{user_id}", **allow("group", "update"))
def add_group_member(group_id: GroupId, user_id: UserId, session: SessionDep, caller: CurrentUser) -> GroupPublic:
    """Put a user in the group (a user outside the organisation joins it for its projects only)."""
    groups.add_user(session, caller, group_id, user_id)
    return group_public(session, groups.get(session, caller, group_id))


@router.delete("/{group_id}/members/{user_id}", status_code=status.HTTP_204_NO_CONTENT, **allow("group", "update"))
def remove_group_member(group_id: GroupId, user_id: UserId, session: SessionDep, caller: CurrentUser) -> None:
    """Take a user out of the group."""
    groups.remove_user(session, caller, group_id, user_id)


@router.put("/{group_id}/role", **allow("group", "update"))
def set_group_role(group_id: GroupId, body: GroupRole, session: SessionDep, caller: CurrentUser) -> GroupPublic:
    """Give the group a role on the organisation (and so on all its projects)."""
    return group_public(session, groups.set_role(session, caller, group_id, Role(body.role)))


@router.delete("/{group_id}/role", status_code=status.HTTP_204_NO_CONTENT, **allow("group", "update"))
def clear_group_role(group_id: GroupId, session: SessionDep, caller: CurrentUser) -> None:
    """Take the group's role on the organisation away (its roles on projects stay)."""
    groups.set_role(session, caller, group_id, None)


@router.put("/{group_id}/projects/{project_id}", **allow("group", "update"))
def grant_group_project_role(group_id: GroupId, project_id: ProjectId, body: GroupRole, session: SessionDep,
                             caller: CurrentUser) -> GroupPublic:
    """Give the group a role on one project of the organisation."""
    return group_public(session, groups.grant_project(session, caller, group_id, project_id, Role(body.role)))


@router.delete("/{group_id}/projects/{project_id}", status_code=status.HTTP_204_NO_CONTENT,
               **allow("group", "update"))
def revoke_group_project_role(group_id: GroupId, project_id: ProjectId, session: SessionDep,
                              caller: CurrentUser) -> None:
    """Take the group's role on one project away."""
    groups.revoke_project(session, caller, group_id, project_id)
