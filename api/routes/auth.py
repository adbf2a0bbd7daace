"""``/api/v1/login``, ``/logout`` and ``/me``: sign in, end the token, who am I, change my password.

With an ``organisation`` that has an LDAP directory, ``/login`` asks the directory (unless the
username is a local user's); ``/login/oidc/start`` and ``/login/oidc`` sign in with the
organisation's OpenID provider (services/federation.py). A directory that does not answer is a
``503`` naming it.

Repeated failed sign-ins of one username from one address are answered ``429`` with
``Retry-After`` (seconds) until the wait is over (services/identity.py says how long).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, status

from cloudland_api.deps import ClientAddress, CurrentUser, SessionDep, SettingsDep, SigningKeyDep
from cloudland_api.policy import allow
from cloudland_api.schemas import (
    AccountPublic, ErrorResponse, LoginRequest, OidcLoginRequest, OidcStart, OidcStartRequest, PasswordChange,
    TokenPublic
)
from cloudland_api.services import federation, identity
from cloudland_api.settings import ApiSettings

router = APIRouter(tags=["auth"])
_SLOWED = {429: {"model": ErrorResponse, "description": "Too many failed sign-ins: wait Retry-After seconds"}}
_DIRECTORY_DOWN = {503: {"model": ErrorResponse, "description": "The organisation's directory does not answer"}}


def _backoff(settings: ApiSettings) -> identity.Backoff:
    return identity.Backoff(settings.login_backoff_max_s)


_SIGN_IN = {400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 409: {"model": ErrorResponse},
            **_DIRECTORY_DOWN}


def _ask_ldap(body: LoginRequest, request: Request, settings: SettingsDep, address: ClientAddress
              ) -> federation.DirectoryAnswer | None:
    request.state.audit_sign_in = (body.username, body.organisation)  # who the audit trail records
    with request.app.state.sessions() as session:
        return federation.ask_ldap(session, settings.state_dir, body.organisation, body.username, body.password,
                                   address=address)


def _ask_oidc(body: OidcLoginRequest, request: Request, key: SigningKeyDep) -> federation.DirectoryAnswer:
    request.state.audit_sign_in = ("(OpenID Connect)", body.organisation)
    with request.app.state.sessions() as session:
        return federation.ask_oidc(session, key, body.organisation, body.id_token)


# A directory is asked in a dependency declared before the session: FastAPI resolves them in
# order, so it answers (or times out) before the SQLite write turn is taken, and no other writer
# waits behind a slow directory. The session then writes what it said, in the turn.
LdapAnswer = Annotated[federation.DirectoryAnswer | None, Depends(_ask_ldap)]
OidcAnswer = Annotated[federation.DirectoryAnswer, Depends(_ask_oidc)]


@router.post("/login", **allow("session", "create", responses={**_SIGN_IN, **_SLOWED}))
def login(body: LoginRequest, answer: LdapAnswer, session: SessionDep, settings: SettingsDep, key: SigningKeyDep,
          address: ClientAddress) -> TokenPublic:
    """A token for the user, acting in ``organisation`` (default: their first one), living
    ``lifetime_s`` (default the API's; never above its ceiling). An organisation with an LDAP
    directory checks its people's passwords there (409 if their directory name is taken here)."""
    lifetime = identity.check_lifetime(body.lifetime_s, settings.token_lifetime_s, settings.token_max_lifetime_s)
    if answer is not None:
        token, expires_at = federation.ldap_login(session, key, lifetime, answer, body.username, address=address,
                                                  backoff=_backoff(settings))
    else:
        token, expires_at = identity.login(session, key, lifetime, body.username, body.password, body.organisation,
                                           address=address, backoff=_backoff(settings))
    return TokenPublic(token=token, expires_at=expires_at)


@router.post("/login/oidc/start", **allow("session", "create", responses=_SIGN_IN))
def oidc_start(body: OidcStartRequest, request: Request, key: SigningKeyDep) -> OidcStart:
    """Where to run the device authorization grant (RFC 8628) with the organisation's OpenID
    provider, and the nonce to send along; then exchange its ID token at ``/login/oidc``."""
    with request.app.state.sessions() as session:  # it writes nothing: a read session, no write turn
        return federation.oidc_start(session, key, body.organisation)


@router.post("/login/oidc", **allow("session", "create", responses=_SIGN_IN))
def oidc_login(body: OidcLoginRequest, answer: OidcAnswer, session: SessionDep, settings: SettingsDep,
               key: SigningKeyDep, address: ClientAddress, request: Request) -> TokenPublic:
    """A CloudLand token for an ID token of the organisation's OpenID provider (issuer, audience,
    signature, expiry and nonce checked; 401 says which failed); the role comes from its groups."""
    lifetime = identity.check_lifetime(body.lifetime_s, settings.token_lifetime_s, settings.token_max_lifetime_s)
    token, expires_at, username = federation.oidc_login(session, key, lifetime, answer, body.id_token,
                                                        address=address)
    request.state.audit_sign_in = (username, body.organisation)
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
                         expires_at=caller.expires_at, project_id=caller.project_id, project=caller.project,
                         project_role=caller.project_role)


@router.post("/me/password", **allow("account", "update", responses={400: {"model": ErrorResponse}, **_SLOWED}))
def change_password(body: PasswordChange, session: SessionDep, caller: CurrentUser, settings: SettingsDep,
                    key: SigningKeyDep, address: ClientAddress) -> TokenPublic:
    """Change your password: every token you hold ends, in every organisation, and the answer is a
    new token for this one. A wrong ``current_password`` counts as a failed sign-in."""
    token, expires_at = identity.change_password(session, key, settings.token_lifetime_s, caller,
                                                 body.current_password, body.new_password, address=address,
                                                 backoff=_backoff(settings))
    return TokenPublic(token=token, expires_at=expires_at)
