"""Projects inside organisations (issue 14): which project a request acts in, and managing
projects and the roles users hold on them.

A request acts in one project: the one its ``X-CloudLand-Project`` header names (id or name),
else the organisation's default project (for a member only through project roles: the first
project they hold a role on; for an application credential: the one it is bound to, and no
other). The caller's role there is the highest of their organisation role (unless their
membership is ``projects_only``), their groups' roles on the organisation and on the project
(services/groups.py), and their own role on the project; an application credential's role caps
it, and every other role of the caller. Tenant rows are then read and written in that project
only (services/crud.py), and the policy's ``project`` scope decides on that role (api/policy.py).

A project's admins (and the organisation's) grant and revoke roles on it; only the
organisation's admins bring in users from outside the organisation.

Refused, with a 409 saying what to do: a name already used in the organisation, deleting the
default project, or one that still holds resources.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from typing import Any

from sqlalchemy import ColumnElement, Select, exists, or_, select
from sqlalchemy import delete as sql_delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cloudland.errors import Conflict, Forbidden, InvalidRequest, NotFound
from cloudland_api.db import for_change
from cloudland_api.models import (
    AppCredential, Base, Membership, Organisation, Project, ProjectOwned, ProjectRole, Role, SecurityGroup,
    SecurityRule, User
)
from cloudland_api.services import crud, groups
from cloudland_api.services.directories import ROLE_ORDER, higher
from cloudland_api.services.identity import Caller

log = logging.getLogger(__name__)

HEADER = "X-CloudLand-Project"


def _named(org_id: int, ref: int | str) -> ColumnElement[bool]:
    column = Project.id if isinstance(ref, int) else Project.name
    return (Project.org_id == org_id) & (column == ref)


def get(session: Session, caller: Caller, ref: int | str, *, lock: bool = False) -> Project:
    """The caller's organisation's project by id or name, or NotFound."""
    return crud.one(session, select(Project).where(_named(caller.org_id, ref)),
                    f"project {ref!r} not found in organisation {caller.organisation!r}", lock=lock)


def cap(role: Role | None, ceiling: Role | None) -> Role | None:
    """``role``, lowered to ``ceiling`` (an application credential's role) when there is one."""
    return role if role is None or ceiling is None else min(role, ceiling, key=ROLE_ORDER.index)


def act_in(session: Session, caller: Caller, ref: str | None) -> Caller:
    """``caller`` acting in the project ``ref`` names (the module's docstring), with their roles
    resolved: on the organisation, on all its projects, and on that project."""
    projects_only = _projects_only(session, caller)
    group_org, group_projects = groups.grants(session, caller.user_id, caller.org_id)
    covering = higher(None if projects_only else caller.role, group_org)
    bound = caller.credential_project_id
    if ref is None:
        project = session.get(Project, bound) if bound is not None else None
        if project is None and covering is None:  # a member of single projects: the first they hold
            held = {*session.scalars(select(ProjectRole.project_id).where(ProjectRole.user_id == caller.user_id)),
                    *group_projects}
            project = session.scalar(select(Project).where(Project.org_id == caller.org_id, Project.id.in_(held))
                                     .order_by(Project.id).limit(1)) if held else None
        project = project or session.scalar(select(Project).where(Project.org_id == caller.org_id,
                                                                  Project.is_default.is_(True)))
        if project is None:
            raise NotFound(f"organisation {caller.organisation!r} has no default project")
    else:
        project = get(session, caller, crud.id_or_name(ref))
        if bound is not None and project.id != bound:
            own = session.get(Project, bound)
            raise Forbidden(f"application credential {caller.credential_id} acts only in project "
                            f"{own.name if own else bound!r}; the request names project {project.name!r} ({HEADER})")
    granted = session.scalar(select(ProjectRole.role).where(ProjectRole.project_id == project.id,
                                                            ProjectRole.user_id == caller.user_id))
    ceiling = caller.credential_role  # a credential never acts above its own role
    return replace(caller, role=cap(higher(caller.role, group_org), ceiling) or caller.role,
                   all_projects_role=cap(covering, ceiling), project_id=project.id, project=project.name,
                   project_role=cap(higher(covering, granted, group_projects.get(project.id)), ceiling))


def roles_on(session: Session, caller: Caller, project_ids: list[int]) -> dict[int, Role | None]:
    """The caller's role on each of the organisation's projects ``project_ids``: the highest of
    the role covering them all, their own on it and their groups', capped (``act_in``'s rule)."""
    direct = dict(session.execute(select(ProjectRole.project_id, ProjectRole.role).where(
        ProjectRole.user_id == caller.user_id, ProjectRole.project_id.in_(project_ids))).all())
    _, group_projects = groups.grants(session, caller.user_id, caller.org_id)
    return {p: cap(higher(caller.all_projects_role, direct.get(p), group_projects.get(p)), caller.credential_role)
            for p in project_ids}


# -- projects ---------------------------------------------------------------------------------


def _projects_only(session: Session, caller: Caller) -> bool:
    return bool(session.scalar(select(Membership.projects_only).where(
        Membership.user_id == caller.user_id, Membership.org_id == caller.org_id)))


def _visible(session: Session, caller: Caller) -> Select[tuple[Project]]:
    """The organisation's projects the caller holds a role on (all, for a member of the whole
    organisation; the one it is bound to, for an application credential); another's is NotFound,
    as another organisation's row."""
    query = select(Project).where(Project.org_id == caller.org_id)
    if caller.credential_project_id is not None:
        return query.where(Project.id == caller.credential_project_id)
    if caller.all_projects_role is None:
        _, group_projects = groups.grants(session, caller.user_id, caller.org_id)
        query = query.where(or_(Project.id.in_(list(group_projects)), exists().where(
            ProjectRole.project_id == Project.id, ProjectRole.user_id == caller.user_id)))
    return query


def _with_roles(session: Session, caller: Caller, rows: list[Project]) -> list[tuple[Project, Role | None]]:
    roles = roles_on(session, caller, [p.id for p in rows])
    return [(p, roles[p.id]) for p in rows]


def page(session: Session, caller: Caller, limit: int, after: str | None
         ) -> tuple[list[tuple[Project, Role | None]], str | None]:
    """One page of the projects the caller sees (``_visible``), each with their role there, by id."""
    rows, next_after = crud.keyset(session, _visible(session, caller), [Project.id], limit, after)
    return _with_roles(session, caller, rows), next_after


def show(session: Session, caller: Caller, project_id: int) -> tuple[Project, Role | None]:
    """One project the caller sees, with their role there; NotFound otherwise."""
    project = crud.one(session, _visible(session, caller).where(Project.id == project_id),
                       f"project {project_id} not found in organisation {caller.organisation!r}")
    [found] = _with_roles(session, caller, [project])
    return found


def create(session: Session, caller: Caller, name: str) -> Project:
    """A new project of the caller's organisation."""
    taken = f"project name {name!r} is already used in organisation {caller.organisation!r}"
    if session.scalar(select(Project.id).where(_named(caller.org_id, name))) is not None:
        raise Conflict(taken)
    project = Project(org_id=caller.org_id, name=name)
    session.add(project)
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict(taken) from exc
    log.info("event=project_created org_id=%d project_id=%d user_id=%d", caller.org_id, project.id, caller.user_id)
    return project


def owned_tables() -> list[type[ProjectOwned]]:
    """Every table whose rows belong to a project (the ``ProjectOwned`` mixin)."""
    return sorted((m.class_ for m in Base.registry.mappers if issubclass(m.class_, ProjectOwned)),
                  key=lambda model: model.__tablename__)  # type: ignore[attr-defined]


def delete(session: Session, caller: Caller, project_id: int) -> None:
    """Delete an empty project that is not the default one; the application credentials bound
    to it end with it."""
    project = get(session, caller, project_id, lock=True)
    if project.is_default:
        raise Conflict(f"project {project.name!r} is organisation {caller.organisation!r}'s default project; "
                       "it is deleted with the organisation")
    # Its default security group (made with it, models/secgroups.py) is not the tenant's to
    # delete: it goes with the project, its rules first (they name it).
    default_group = select(SecurityGroup.id).where(SecurityGroup.project_id == project.id,
                                                   SecurityGroup.is_default.is_(True)).scalar_subquery()
    made_with_it: dict[Any, ColumnElement[bool]] = {SecurityGroup: SecurityGroup.is_default.is_(False),
                                                    SecurityRule: SecurityRule.group_id != default_group}
    for model in owned_tables():
        held = select(model.project_id).where(model.project_id == project.id, *(
            [made_with_it[model]] if model in made_with_it else []))
        if session.scalar(held.limit(1)) is not None:
            table = model.__tablename__  # type: ignore[attr-defined]
            raise Conflict(f"project {project.name!r} still holds {table.replace('_', ' ')}: delete them first")
    session.execute(sql_delete(SecurityRule).where(SecurityRule.project_id == project.id))
    session.execute(sql_delete(SecurityGroup).where(SecurityGroup.project_id == project.id))
    # Explicitly: on SQLite, migration 0014 added the column without its foreign key.
    session.execute(sql_delete(AppCredential).where(AppCredential.project_id == project.id))
    session.delete(project)
    session.commit()
    log.info("event=project_deleted org_id=%d project_id=%d user_id=%d", caller.org_id, project_id, caller.user_id)


# -- roles on a project -----------------------------------------------------------------------


def members(session: Session, caller: Caller, project_id: int, limit: int, after: str | None
            ) -> tuple[list[tuple[ProjectRole, str]], str | None]:
    """One page of the project's own role holders, by user id, with their usernames."""
    project = get(session, caller, project_id)
    rows, next_after = crud.keyset(session, select(ProjectRole).where(ProjectRole.project_id == project.id),
                                   [ProjectRole.user_id], limit, after)  # type: ignore[arg-type]
    names = dict(session.execute(select(User.id, User.username).where(User.id.in_([r.user_id for r in rows]))).all())
    return [(r, names[r.user_id]) for r in rows], next_after


def _managed(session: Session, caller: Caller, project_id: int, *, lock: bool = False) -> Project:
    """The project whose roles the caller manages: an admin of the organisation manages every
    project's, a project's admin that one's (api/policy.py checked the role in the project the
    request acts in; here, the one the path names). A project the caller holds no role on is
    NotFound, as ``show`` has it; one they hold a lower role on, Forbidden."""
    project = get(session, caller, project_id, lock=lock)
    role = (caller.project_role if project.id == caller.project_id
            else roles_on(session, caller, [project.id])[project.id])
    if role is None and caller.all_projects_role is None:
        raise NotFound(f"project {project_id} not found in organisation {caller.organisation!r}")
    if role is not Role.admin:
        raise Forbidden(f"role {role.value if role else 'none'!r} in project {project.name!r} may not manage its "
                        "roles; needs admin there (or of the organisation)")
    return project


def grant(session: Session, caller: Caller, project_id: int, user_id: int, role: Role) -> tuple[ProjectRole, str]:
    """Give user ``user_id`` ``role`` on the project (``_managed``: its admins and the
    organisation's). A user of the cloud who is not in the organisation joins it for its projects
    only (``projects_only``, as a reader of the organisation's own resources: flavors, its users);
    only the organisation's admins bring one in."""
    session.scalar(for_change(select(Organisation).where(Organisation.id == caller.org_id)))
    project = _managed(session, caller, project_id)
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"user {user_id} not found")
    if session.get(Membership, (user_id, caller.org_id)) is None:
        if caller.all_projects_role is not Role.admin:
            raise NotFound(f"user {user_id} is not a member of organisation {caller.organisation!r}; only its "
                           "admins add users from outside")
        session.add(Membership(user_id=user_id, org_id=caller.org_id, role=Role.reader, projects_only=True))
    row = session.get(ProjectRole, (project.id, user_id))
    if row is None:
        row = ProjectRole(project_id=project.id, user_id=user_id, role=role)
        session.add(row)
    else:
        row.role = role
    session.commit()
    log.info("event=project_role_granted org_id=%d project_id=%d user_id=%d role=%s by=%d", caller.org_id,
             project.id, user_id, role.value, caller.user_id)
    return row, user.username


def revoke(session: Session, caller: Caller, project_id: int, user_id: int) -> None:
    """Remove user ``user_id``'s role on the project (every request re-reads it: it ends at once)."""
    project = _managed(session, caller, project_id)
    crud.remove(session, ProjectRole, (project.id, user_id),
                f"user {user_id} holds no role on project {project.name!r}")
    log.info("event=project_role_revoked org_id=%d project_id=%d user_id=%d by=%d", caller.org_id, project.id,
             user_id, caller.user_id)


REF_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # the header: an id or a name


def check_ref(ref: str | None) -> str | None:
    """The header's value, or InvalidRequest when it cannot name a project."""
    if ref is not None and not re.fullmatch(REF_PATTERN, ref):
        raise InvalidRequest(f"{HEADER}: {ref[:64]!r} is not a project id or name")
    return ref
