"""``/api/v1/app-credentials``: a user's application credentials for scripts (services/credentials.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from cloudland_api.deps import CurrentUser, PageAfter, PageLimit, SessionDep
from cloudland_api.policy import allow
from cloudland_api.schemas import (
    MAX_ID, AppCredentialCreate, AppCredentialList, AppCredentialPublic, AppCredentialSecret, ErrorResponse
)
from cloudland_api.services import credentials

router = APIRouter(prefix="/app-credentials", tags=["app-credentials"], responses={404: {"model": ErrorResponse}})
CredentialId = Annotated[int, Path(ge=1, le=MAX_ID, description="Application credential id")]


@router.post("", status_code=status.HTTP_201_CREATED,
             **allow("app_credential", "create", responses={400: {"model": ErrorResponse},
                                                            403: {"model": ErrorResponse}}))
def create_credential(body: AppCredentialCreate, session: SessionDep, caller: CurrentUser) -> AppCredentialSecret:
    """A credential acting for you in this organisation with ``role`` (at most yours) until
    ``lifetime_s`` passes; send ``secret`` as the bearer token. It is shown this once."""
    row, secret = credentials.create(session, caller, body.name, body.role, body.lifetime_s)
    return AppCredentialSecret(**AppCredentialPublic.model_validate(row).model_dump(), secret=secret)


@router.get("", **allow("app_credential", "read"))
def list_credentials(session: SessionDep, caller: CurrentUser, limit: PageLimit = 50,
                     after: PageAfter = None) -> AppCredentialList:
    """One page of your credentials in this organisation, by id (never their secrets)."""
    rows, next_after = credentials.page(session, caller, limit, after)
    return AppCredentialList(items=[AppCredentialPublic.model_validate(r) for r in rows], limit=limit,
                             next_after=next_after)


@router.delete("/{credential_id}", status_code=status.HTTP_204_NO_CONTENT, **allow("app_credential", "delete"))
def revoke_credential(credential_id: CredentialId, session: SessionDep, caller: CurrentUser) -> None:
    """Revoke one of your credentials: it stops working at once."""
    credentials.revoke(session, caller, credential_id)
