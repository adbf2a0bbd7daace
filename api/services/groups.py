"""Groups of an organisation's users (issue 14): its admins create groups, add and remove users,
and give a group a role on the organisation (all its projects) or on one project. A user's role
is then the highest of their own and their groups' (services/projects.py ``roles_in``), capped by
an application credential's.

A user of the cloud added to a group who is not in the organisation joins it for its projects
only (``projects_only``), as a project grant makes them: their own organisation role then counts
for none of its projects, their groups' roles do. Removing a user from the organisation takes
them out of its groups (services/tenants.py).

Refused, with a 409: a name already used in the organisation. Every change ends cached callers
at once (the tables are in api/tokencache.py's set).
"""

from __future__ import annotations

import logging

from sqlalchemy import Select, delete, select
from sqlalchemy.orm import Session

from cloudland.errors import NotFound
from cloudland_api.db import for_change
from cloudland_api.models import Group, GroupMember, GroupProjectRole, Membership, Organisation, Project, Role, User
from cloudland_api.services import crud
from cloudland_api.services.directories import higher
from cloudland_api.services.identity import Caller

log = logging.getLogger(__name__)


def grants(session: Session, user_id: int, org_id: int) -> tuple[Role | None, dict[int, Role]]:
    """What the user's groups in organisation ``org_id`` give them: the highest role on the
    organisation, and the highest on each project the groups hold a role on (one query)."""
    rows = session.execute(
        select(Group.role, GroupProjectRole.project_id, GroupProjectRole.role.label("project_role"))
        .join(GroupMember, GroupMember.group_id == Group.id)
        .outerjoin(GroupProjectRole, GroupProjectRole.group_id == Group.id)
        .where(GroupMember.user_id == user_id, Group.org_id == org_id)).all()
    on_projects: dict[int, Role] = {}
    for row in rows:
        if row.project_id is not None:
            role = higher(on_projects.get(row.project_id), row.project_role)
            assert role is not None
            on_projects[row.project_id] = role
    return higher(*(row.role for row in rows)), on_projects


def leave_organisation(session: Session, user_id: int, org_id: int) -> None:
    """Take the user out of every group of the organisation (the caller commits)."""
    session.execute(delete(GroupMember).where(GroupMember.user_id == user_id, GroupMember.group_id.in_(
        select(Group.id).where(Group.org_id == org_id))))


def _groups(caller: Caller) -> Select[tuple[Group]]:
    return select(Group).where(Group.org_id == caller.org_id)


def get(session: Session, caller: Caller, ref: int | str) -> Group:
    """The caller's organisation's group by id or name, or NotFound."""
    column = Group.id if isinstance(ref, int) else Group.name
    return crud.one(session, _groups(caller).where(column == ref),  # type: ignore[no-any-return]
                    f"group {ref!r} not found in organisation {caller.organisation!r}")


def page(session: Session, caller: Caller, limit: int, after: str | None) -> tuple[list[Group], str | None]:
    """One page of the organisation's groups, by id."""
    return crud.keyset(session, _groups(caller), [Group.id], limit, after)  # type: ignore[arg-type]


def members(session: Session, group: Group) -> list[tuple[int, str]]:
    """The group's users as (id, username), by id."""
    return [(row.id, row.username) for row in session.execute(
        select(User.id, User.username).join(GroupMember, GroupMember.user_id == User.id)
        .where(GroupMember.group_id == group.id).order_by(User.id))]


def project_roles(session: Session, group: Group) -> list[tuple[int, str, Role]]:
    """The group's roles on projects as (project id, name, role), by project id."""
    return [(row.id, row.name, row.role) for row in session.execute(
        select(Project.id, Project.name, GroupProjectRole.role)
        .join(GroupProjectRole, GroupProjectRole.project_id == Project.id)
        .where(GroupProjectRole.group_id == group.id).order_by(Project.id))]


def create(session: Session, caller: Caller, name: str, role: Role | None) -> Group:
    """A new group of the caller's organisation, with ``role`` on it (None: none)."""
    group = crud.insert_named(session, Group(org_id=caller.org_id, name=name, role=role), "group")
    log.info("event=group_created org_id=%d group_id=%d role=%s user_id=%d", caller.org_id, group.id,
             role.value if role else "none", caller.user_id)
    return group


def delete_group(session: Session, caller: Caller, group_id: int) -> None:
    """Delete a group: its members lose what it gave them at their next request."""
    crud.delete(session, get(session, caller, group_id), caller, "group")


def _lock_org(session: Session, caller: Caller) -> None:
    session.scalar(for_change(select(Organisation.id).where(Organisation.id == caller.org_id)))


def add_user(session: Session, caller: Caller, group_id: int, user_id: int) -> tuple[int, str]:
    """Put user ``user_id`` in the group (a user outside the organisation joins it for its
    projects only); adding a member again changes nothing."""
    _lock_org(session, caller)
    group = get(session, caller, group_id)
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"user {user_id} not found")
    if session.get(Membership, (user_id, caller.org_id)) is None:
        session.add(Membership(user_id=user_id, org_id=caller.org_id, role=Role.reader, projects_only=True))
    member = session.get(GroupMember, (group.id, user_id))
    if member is None:
        session.add(GroupMember(group_id=group.id, user_id=user_id))
    else:
        member.directory = None  # an admin's now: no directory's sign-in takes it away
    session.commit()
    log.info("event=group_member_added org_id=%d group_id=%d member_id=%d user_id=%d", caller.org_id, group.id,
             user_id, caller.user_id)
    return user.id, user.username


def remove_user(session: Session, caller: Caller, group_id: int, user_id: int) -> None:
    """Take user ``user_id`` out of the group (effective at their next request)."""
    group = get(session, caller, group_id)
    crud.remove(session, GroupMember, (group.id, user_id), f"user {user_id} is not in group {group.name!r}")
    log.info("event=group_member_removed org_id=%d group_id=%d member_id=%d user_id=%d", caller.org_id, group.id,
             user_id, caller.user_id)


def set_role(session: Session, caller: Caller, group_id: int, role: Role | None) -> Group:
    """Give the group ``role`` on the organisation (None: take it away)."""
    group = get(session, caller, group_id)
    group.role = role
    session.commit()
    log.info("event=group_role_set org_id=%d group_id=%d role=%s user_id=%d", caller.org_id, group.id,
             role.value if role else "none", caller.user_id)
    return group


def _project(session: Session, caller: Caller, project_id: int) -> Project:
    return crud.one(session, select(Project).where(Project.org_id == caller.org_id,  # type: ignore[no-any-return]
                                                   Project.id == project_id),
                    f"project {project_id} not found in organisation {caller.organisation!r}")


def grant_project(session: Session, caller: Caller, group_id: int, project_id: int, role: Role) -> Group:
    """Give the group ``role`` on one project of its organisation."""
    group = get(session, caller, group_id)
    project = _project(session, caller, project_id)
    row = session.get(GroupProjectRole, (group.id, project.id))
    if row is None:
        session.add(GroupProjectRole(group_id=group.id, project_id=project.id, role=role))
    else:
        row.role = role
    session.commit()
    log.info("event=group_project_role_granted org_id=%d group_id=%d project_id=%d role=%s user_id=%d",
             caller.org_id, group.id, project.id, role.value, caller.user_id)
    return group


def revoke_project(session: Session, caller: Caller, group_id: int, project_id: int) -> Group:
    """Take the group's role on one project away."""
    group = get(session, caller, group_id)
    project = _project(session, caller, project_id)
    crud.remove(session, GroupProjectRole, (group.id, project.id),
                f"group {group.name!r} holds no role on project {project.name!r}")
    log.info("event=group_project_role_revoked org_id=%d group_id=%d project_id=%d user_id=%d", caller.org_id,
             group.id, project.id, caller.user_id)
    return group
