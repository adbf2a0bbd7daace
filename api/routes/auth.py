"""``/api/v1/login``, ``/logout`` and ``/me``: sign in, end the token, who am I, change my password.

Repeated failed sign-ins of one username from one address are answered ``429`` with
``Retry-After`` (seconds) until the wait is over (services/identity.py says how long).
"""

from __future__ import annotations

from fastapi import APIRouter, status

from cloudland_api.deps import ClientAddress, CurrentUser, SessionDep, SettingsDep, SigningKeyDep
from cloudland_api.policy import allow
from cloudland_api.schemas import AccountPublic, ErrorResponse, LoginRequest, PasswordChange, TokenPublic
from cloudland_api.services import identity
from cloudland_api.settings import ApiSettings

router = APIRouter(tags=["auth"])
_SLOWED = {429: {"model": ErrorResponse, "description": "Too many failed sign-ins: wait Retry-After seconds"}}


def _backoff(settings: ApiSettings) -> identity.Backoff:
    return identity.Backoff(settings.login_backoff_max_s)


@router.post("/login", **allow("session", "create", responses={400: {"model": ErrorResponse},
                                                                401: {"model": ErrorResponse}, **_SLOWED}))
def login(body: LoginRequest, session: SessionDep, settings: SettingsDep, key: SigningKeyDep,
          address: ClientAddress) -> TokenPublic:
    """A token for the user, acting in ``organisation`` (default: their first one), living
    ``lifetime_s`` (default the API's; never above its ceiling)."""
    lifetime = identity.check_lifetime(body.lifetime_s, settings.token_lifetime_s, settings.token_max_lifetime_s)
    token, expires_at = identity.login(session, key, lifetime, body.username, body.password, body.organisation,
                                       address=address, backoff=_backoff(settings))
    return TokenPublic(token=token, expires_at=expires_at)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT, **allow("session", "delete"))
def logout(session: SessionDep, caller: CurrentUser) -> None:
    """End the token this request is sent with (the user's other tokens keep working)."""
    identity.logout(session, caller)


@router.get("/me", **allow("account", "read"))
def whoami(caller: CurrentUser) -> AccountPublic:
    """The user the token speaks for, the organisation it acts in and the role there."""
    return AccountPublic(user_id=caller.user_id, username=caller.username, org_id=caller.org_id,
                         organisation=caller.organisation, role=caller.role, operator=caller.operator,
                         expires_at=caller.expires_at)


@router.post("/me/password", **allow("account", "update", responses={400: {"model": ErrorResponse}, **_SLOWED}))
def change_password(body: PasswordChange, session: SessionDep, caller: CurrentUser, settings: SettingsDep,
                    key: SigningKeyDep, address: ClientAddress) -> TokenPublic:
    """Change your password: every token you hold ends, in every organisation, and the answer is a
    new token for this one. A wrong ``current_password`` counts as a failed sign-in."""
    token, expires_at = identity.change_password(session, key, settings.token_lifetime_s, caller,
                                                 body.current_password, body.new_password, address=address,
                                                 backoff=_backoff(settings))
    return TokenPublic(token=token, expires_at=expires_at)
