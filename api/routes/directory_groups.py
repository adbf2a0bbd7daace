"""``/api/v1/directory-groups``: the organisation's map of its directory's groups (LDAP, OpenID)
onto its local groups, set by its admins; applied at each sign-in (services/directory_groups.py)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, status

from cloudland_api.deps import CurrentUser, PageAfter, PageLimit, SessionDep
from cloudland_api.models import DirectoryGroup
from cloudland_api.policy import allow
from cloudland_api.schemas import MAX_ID, DirectoryGroupCreate, DirectoryGroupList, DirectoryGroupPublic, ErrorResponse
from cloudland_api.services import crud, directory_groups

router = APIRouter(prefix="/directory-groups", tags=["groups"], responses={404: {"model": ErrorResponse}})
MapId = Annotated[int, Path(ge=1, le=MAX_ID, description="Mapping id")]


def _public(row: DirectoryGroup, group: str) -> DirectoryGroupPublic:
    return DirectoryGroupPublic(id=row.id, directory=row.directory, name=row.name, group_id=row.group_id,
                                group=group, created_at=row.created_at)


@router.get("", **allow("directory_group", "read"))
def list_directory_groups(
    session: SessionDep, caller: CurrentUser, limit: PageLimit = 50, after: PageAfter = None,
    directory: Annotated[Literal["ldap", "oidc"] | None, Query(description="Only this directory's")] = None,
) -> DirectoryGroupList:
    """One page of the organisation's directory groups and the local groups they map onto, by id."""
    rows, next_after = directory_groups.page(session, caller, limit, after, directory)
    names = directory_groups.group_names(session, rows)
    return DirectoryGroupList(items=[_public(r, names.get(r.group_id, "")) for r in rows], limit=limit,
                              next_after=next_after)


@router.post("", status_code=status.HTTP_201_CREATED,
             **allow("directory_group", "create", responses={409: {"model": ErrorResponse}}))
def map_directory_group(body: DirectoryGroupCreate, session: SessionDep, caller: CurrentUser) -> DirectoryGroupPublic:
    """Map a group of the organisation's LDAP directory or OpenID provider onto a local group: from
    each member's next sign-in through it, they are in the local group while the directory says so."""
    row = directory_groups.add(session, caller, body.directory, body.name, crud.id_or_name(body.group))
    return _public(row, directory_groups.group_names(session, [row])[row.group_id])


@router.delete("/{map_id}", status_code=status.HTTP_204_NO_CONTENT, **allow("directory_group", "delete"))
def unmap_directory_group(map_id: MapId, session: SessionDep, caller: CurrentUser) -> None:
    """Forget a mapping: the memberships it made go at each member's next sign-in through the directory."""
    directory_groups.remove(session, caller, map_id)
