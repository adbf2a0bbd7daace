"""Directory groups onto local groups (issue 14): an organisation's admins map a group of its LDAP
directory (its DN or name) or of its OpenID provider (a value of the groups claim) onto one of
its local groups (services/groups.py); at each sign-in through that directory the user's
membership of every mapped local group is set to what the directory says: added when it names a
mapped group, taken away when it no longer does. So a role granted to the local group, on the
organisation or on one project, reaches the directory's people.

Only the memberships a directory made (``GroupMember.directory``) are ever taken away by it: a
user an admin put in the group stays, whatever the directory says. A user whose directory
groups map to no role (``roles`` in the directory's settings) but onto a local group joins the
organisation for its projects only (``projects_only``), as a group's outsider does.
"""

from __future__ import annotations

import logging

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cloudland.errors import Conflict, NotFound
from cloudland_api.models import Directory, DirectoryGroup, Group, GroupMember
from cloudland_api.services import crud, groups
from cloudland_api.services.directories import LDAP, OIDC
from cloudland_api.services.identity import Caller

log = logging.getLogger(__name__)

KINDS = (LDAP, OIDC)
_NAMES = {LDAP: "LDAP directory", OIDC: "OpenID provider"}


def mapped(session: Session, org_id: int, directory: str, names: list[str]) -> set[int]:
    """The local groups of organisation ``org_id`` that ``directory``'s groups ``names`` (any
    case) map onto."""
    wanted = sorted({name.lower() for name in names})
    if not wanted:
        return set()
    return set(session.scalars(select(DirectoryGroup.group_id).where(
        DirectoryGroup.org_id == org_id, DirectoryGroup.directory == directory,
        func.lower(DirectoryGroup.name).in_(wanted))))


def sync(session: Session, user_id: int, org_id: int, directory: str, local: set[int]) -> None:
    """Make user ``user_id``'s memberships of organisation ``org_id``'s groups that ``directory``
    made be exactly ``local`` (``mapped``'s): add the missing ones, take away those it no longer
    names; an admin's memberships stay. The caller commits."""
    held = dict(session.execute(select(GroupMember.group_id, GroupMember.directory)
                                .join(Group, Group.id == GroupMember.group_id)
                                .where(GroupMember.user_id == user_id, Group.org_id == org_id)).all())
    added = sorted(local - held.keys())
    gone = sorted(g for g, made_by in held.items() if made_by == directory and g not in local)
    session.add_all(GroupMember(group_id=g, user_id=user_id, directory=directory) for g in added)
    if gone:
        session.execute(delete(GroupMember).where(GroupMember.user_id == user_id, GroupMember.group_id.in_(gone)))
    if added or gone:
        log.info("event=directory_groups_synced org_id=%d user_id=%d directory=%s added=%s removed=%s", org_id,
                 user_id, directory, added, gone)


# -- the organisation admins' map --------------------------------------------------------------


def page(session: Session, caller: Caller, limit: int, after: str | None,
         directory: str | None = None) -> tuple[list[DirectoryGroup], str | None]:
    """One page of the organisation's map, by id."""
    query = select(DirectoryGroup).where(DirectoryGroup.org_id == caller.org_id)
    if directory is not None:
        query = query.where(DirectoryGroup.directory == directory)
    return crud.keyset(session, query, [DirectoryGroup.id], limit, after)  # type: ignore[arg-type]


def group_names(session: Session, rows: list[DirectoryGroup]) -> dict[int, str]:
    """The local groups' names of ``rows``, by group id (one query)."""
    ids = {row.group_id for row in rows}
    return dict(session.execute(select(Group.id, Group.name).where(Group.id.in_(ids))).all()) if ids else {}


def add(session: Session, caller: Caller, directory: str, name: str, group_ref: int | str) -> DirectoryGroup:
    """Map ``directory``'s group ``name`` onto the local group ``group_ref`` (id or name); the
    organisation must have that directory; the same mapping twice is a Conflict."""
    if session.get(Directory, (caller.org_id, directory)) is None:
        raise NotFound(f"organisation {caller.organisation!r} has no {_NAMES[directory]} configured")
    group = groups.get(session, caller, group_ref)
    row = DirectoryGroup(org_id=caller.org_id, directory=directory, name=name, group_id=group.id)
    taken = Conflict(f"{directory} group {name!r} is already mapped onto group {group.name!r}")
    if session.scalar(select(DirectoryGroup.id).where(
            DirectoryGroup.org_id == caller.org_id, DirectoryGroup.directory == directory,
            func.lower(DirectoryGroup.name) == name.lower(), DirectoryGroup.group_id == group.id)) is not None:
        raise taken
    session.add(row)
    try:
        session.commit()
    except IntegrityError as exc:  # a racing map of the same
        session.rollback()
        raise taken from exc
    log.info("event=directory_group_mapped org_id=%d directory=%s group_id=%d map_id=%d user_id=%d", caller.org_id,
             directory, group.id, row.id, caller.user_id)
    return row


def get(session: Session, caller: Caller, map_id: int) -> DirectoryGroup:
    """The organisation's mapping ``map_id``, or NotFound (another organisation's too)."""
    return crud.one(session, select(DirectoryGroup).where(  # type: ignore[no-any-return]
        DirectoryGroup.org_id == caller.org_id, DirectoryGroup.id == map_id),
        f"directory group mapping {map_id} not found in organisation {caller.organisation!r}")


def remove(session: Session, caller: Caller, map_id: int) -> None:
    """Forget a mapping: the memberships it made go at each member's next sign-in through the
    directory (it no longer names the group), not now."""
    row = get(session, caller, map_id)
    session.delete(row)
    session.commit()
    log.info("event=directory_group_unmapped org_id=%d map_id=%d user_id=%d", caller.org_id, map_id, caller.user_id)
