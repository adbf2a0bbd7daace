"""``/api/v1/organisations/{org_id}/ldap`` and ``/oidc``: the directory an organisation's people
sign in with (operators configure it; services/directories.py). The LDAP bind password is
written, never read back."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from cloudland_api.deps import CurrentUser, SessionDep, SettingsDep
from cloudland_api.models import Directory
from cloudland_api.policy import allow
from cloudland_api.schemas import MAX_ID, ErrorResponse, LdapPublic, LdapSettings, OidcPublic, OidcSettings
from cloudland_api.services import directories

router = APIRouter(tags=["organisations"], responses={404: {"model": ErrorResponse}})
OrgId = Annotated[int, Path(ge=1, le=MAX_ID, description="Organisation id")]


def _ldap(row: Directory) -> LdapPublic:
    return LdapPublic(org_id=row.org_id, updated_at=row.updated_at, **row.settings)


def _oidc(row: Directory) -> OidcPublic:
    return OidcPublic(org_id=row.org_id, updated_at=row.updated_at, **row.settings)


@router.get("/organisations/{org_id}/ldap", **allow("directory", "read"))
def get_ldap(org_id: OrgId, session: SessionDep) -> LdapPublic:
    """The organisation's LDAP settings (without the bind password)."""
    return _ldap(directories.get(session, org_id, directories.LDAP))


@router.put("/organisations/{org_id}/ldap", **allow("directory", "update"))
def put_ldap(org_id: OrgId, body: LdapSettings, session: SessionDep, settings: SettingsDep,
             caller: CurrentUser) -> LdapPublic:
    """Sign the organisation's people in against its LDAP server (search with ``bind_dn``, then
    bind as the user); ``roles`` maps its groups to roles, applied at every sign-in."""
    return _ldap(directories.put(session, settings.state_dir, org_id, body, caller.user_id))


@router.delete("/organisations/{org_id}/ldap", status_code=status.HTTP_204_NO_CONTENT,
               **allow("directory", "delete"))
def delete_ldap(org_id: OrgId, session: SessionDep, settings: SettingsDep, caller: CurrentUser) -> None:
    """Stop signing in through the organisation's LDAP server (its bind password is erased)."""
    directories.delete(session, settings.state_dir, org_id, directories.LDAP, caller.user_id)


@router.get("/organisations/{org_id}/oidc", **allow("directory", "read"))
def get_oidc(org_id: OrgId, session: SessionDep) -> OidcPublic:
    """The organisation's OpenID Connect settings."""
    return _oidc(directories.get(session, org_id, directories.OIDC))


@router.put("/organisations/{org_id}/oidc", **allow("directory", "update"))
def put_oidc(org_id: OrgId, body: OidcSettings, session: SessionDep, settings: SettingsDep,
             caller: CurrentUser) -> OidcPublic:
    """Trust an OpenID provider for the organisation: its ID tokens for ``client_id`` sign its
    people in (``cloudland login --oidc``); ``roles`` maps the groups claim to roles."""
    return _oidc(directories.put(session, settings.state_dir, org_id, body, caller.user_id))


@router.delete("/organisations/{org_id}/oidc", status_code=status.HTTP_204_NO_CONTENT,
               **allow("directory", "delete"))
def delete_oidc(org_id: OrgId, session: SessionDep, settings: SettingsDep, caller: CurrentUser) -> None:
    """Stop trusting the organisation's OpenID provider."""
    directories.delete(session, settings.state_dir, org_id, directories.OIDC, caller.user_id)
