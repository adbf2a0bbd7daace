"""Request dependencies as ``Annotated`` types, so route signatures read like prose."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from cloudland.errors import Unauthorized
from cloudland_api import services
from cloudland_api.db import iter_session
from cloudland_api.security import decode_token
from cloudland_api.settings import ApiSettings

# auto_error=False: a missing header becomes our Unauthorized (401, our error body)
# instead of FastAPI's own 403; the scheme still gives /docs its "Authorize" button.
_bearer = HTTPBearer(auto_error=False, description="Token from POST /api/v1/login")


def get_settings(request: Request) -> ApiSettings:
    """The settings the app was created with."""
    settings: ApiSettings = request.app.state.settings
    return settings


def get_signing_key(request: Request) -> bytes:
    """The HS256 key loaded at start-up."""
    key: bytes = request.app.state.signing_key
    return key


def get_session(request: Request) -> Iterator[Session]:
    """One database session per request; a write session for anything but GET and HEAD."""
    reads_only = request.method in ("GET", "HEAD")
    yield from iter_session(request.app.state.sessions if reads_only else request.app.state.write_sessions)


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
SigningKeyDep = Annotated[bytes, Depends(get_signing_key)]
SessionDep = Annotated[Session, Depends(get_session)]


def get_caller(
    session: SessionDep,
    key: SigningKeyDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> services.Caller:
    """The user a valid bearer token names, with the organisation and role it acts in."""
    if credentials is None:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>' from POST /api/v1/login")
    claims = decode_token(key, credentials.credentials)
    return services.caller_for(session, claims.user_id, claims.org_id)


CurrentUser = Annotated[services.Caller, Depends(get_caller)]
