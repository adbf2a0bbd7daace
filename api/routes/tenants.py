"""``/api/v1/organisations`` (operators), ``/users`` and ``/memberships`` (an organisation's admins;
its readers may list). Rules and refusals: api/services/tenants.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, status

from cloudland_api.deps import CurrentUser, PageAfter, PageLimit, SessionDep, SettingsDep
from cloudland_api.models import Membership
from cloudland_api.policy import allow
from cloudland_api.schemas import (
    MAX_ID,
    ErrorResponse,
    MembershipCreate,
    MembershipUpdate,
    OrganisationCreate,
    OrganisationList,
    OrganisationPublic,
    UserCreate,
    UserList,
    UserPublic,
)
from cloudland_api.services import directories, tenants

router = APIRouter(responses={404: {"model": ErrorResponse}})
OrgId = Annotated[int, Path(ge=1, le=MAX_ID, description="Organisation id")]
UserId = Annotated[int, Path(ge=1, le=MAX_ID, description="User id")]
_CONFLICT = {409: {"model": ErrorResponse}}
_GONE = status.HTTP_204_NO_CONTENT


def user_public(membership: Membership) -> UserPublic:
    """A member as the API shows them: the user and their role here."""
    return UserPublic(id=membership.user_id, username=membership.user.username, role=membership.role,
                      created_at=membership.user.created_at)


# -- organisations --------------------------------------------------------------------------


@router.get("/organisations", tags=["organisations"], **allow("organisation", "read"))
def list_organisations(session: SessionDep, limit: PageLimit = 50, after: PageAfter = None) -> OrganisationList:
    """One page of every organisation, by id."""
    rows, next_after = tenants.list_organisations(session, limit, after)
    return OrganisationList(items=[OrganisationPublic.model_validate(o) for o in rows], limit=limit,
                            next_after=next_after)


@router.post("/organisations", tags=["organisations"], status_code=status.HTTP_201_CREATED,
             **allow("organisation", "create", responses=_CONFLICT))
def create_organisation(body: OrganisationCreate, session: SessionDep, caller: CurrentUser) -> OrganisationPublic:
    """Create an organisation with its first admin: a new user (``admin.password`` given) or an
    existing one (without)."""
    return OrganisationPublic.model_validate(tenants.create_organisation(session, caller, body))


@router.delete("/organisations/{org_id}", tags=["organisations"], status_code=_GONE,
               **allow("organisation", "delete", responses=_CONFLICT))
def delete_organisation(org_id: OrgId, session: SessionDep, caller: CurrentUser, settings: SettingsDep) -> None:
    """Delete an organisation that has no instances, images or unfinished jobs left (409 names
    them), with its flavors, keys, records, memberships and directories (the LDAP bind password
    erased); its users in no other organisation go too."""
    tenants.delete_organisation(session, caller, org_id)
    directories.erase_secret(settings.state_dir, org_id)


# -- users ----------------------------------------------------------------------------------


@router.get("/users", tags=["users"], **allow("user", "read"))
def list_users(
    session: SessionDep,
    caller: CurrentUser,
    limit: PageLimit = 50,
    after: PageAfter = None,
    username: Annotated[str | None, Query(min_length=1, max_length=64, description="Only this user")] = None,
) -> UserList:
    """One page of the organisation's users by id, each with their role here."""
    rows, next_after = tenants.list_users(session, caller, limit, after, username)
    return UserList(items=[user_public(m) for m in rows], limit=limit, next_after=next_after)


@router.post("/users", tags=["users"], status_code=status.HTTP_201_CREATED,
             **allow("user", "create", responses=_CONFLICT))
def create_user(body: UserCreate, session: SessionDep, caller: CurrentUser) -> UserPublic:
    """Create a user, a member of the organisation with ``role`` (usernames are unique cloud-wide)."""
    return user_public(tenants.create_user(session, caller, body))


@router.get("/users/{user_id}", tags=["users"], **allow("user", "read"))
def get_user(user_id: UserId, session: SessionDep, caller: CurrentUser) -> UserPublic:
    """One user of the organisation, with their role here."""
    return user_public(tenants.get_user(session, caller, user_id))


@router.delete("/users/{user_id}", tags=["users"], status_code=_GONE, **allow("user", "delete", responses=_CONFLICT))
def delete_user(user_id: UserId, session: SessionDep, caller: CurrentUser) -> None:
    """Delete a user whose only organisation this is (409 otherwise: remove the membership
    instead), and not the last admin."""
    tenants.delete_user(session, caller, user_id)


# -- memberships ----------------------------------------------------------------------------


@router.post("/memberships", tags=["users"], status_code=status.HTTP_201_CREATED,
             **allow("membership", "create", responses=_CONFLICT))
def add_membership(body: MembershipCreate, session: SessionDep, caller: CurrentUser) -> UserPublic:
    """An existing user (of another organisation) joins this one with ``role``."""
    return user_public(tenants.add_membership(session, caller, body))


@router.patch("/memberships/{user_id}", tags=["users"], **allow("membership", "update", responses=_CONFLICT))
def change_role(user_id: UserId, body: MembershipUpdate, session: SessionDep, caller: CurrentUser) -> UserPublic:
    """Change a member's role (admin, member, reader); the organisation keeps at least one admin."""
    return user_public(tenants.change_role(session, caller, user_id, body.role))


@router.delete("/memberships/{user_id}", tags=["users"], status_code=_GONE,
               **allow("membership", "delete", responses=_CONFLICT))
def remove_membership(user_id: UserId, session: SessionDep, caller: CurrentUser) -> None:
    """Remove a user from the organisation (not from their others): every token they hold ends.
    409 if it is their only organisation (delete the user instead) or they are its last admin."""
    tenants.remove_membership(session, caller, user_id)
