"""``/api/v1/login``: trade a username and password for a bearer token."""

from __future__ import annotations

from fastapi import APIRouter

from cloudland_api.services import identity
from cloudland_api.deps import SessionDep, SettingsDep, SigningKeyDep
from cloudland_api.schemas import ErrorResponse, LoginRequest, TokenPublic

router = APIRouter(tags=["auth"])


@router.post("/login", responses={401: {"model": ErrorResponse}})
def login(body: LoginRequest, session: SessionDep, settings: SettingsDep, key: SigningKeyDep) -> TokenPublic:
    """A token for the user, acting in ``organisation`` (default: their first one)."""
    token, expires_at = identity.login(
        session, key, settings.token_lifetime_s, body.username, body.password, body.organisation
    )
    return TokenPublic(token=token, expires_at=expires_at)
