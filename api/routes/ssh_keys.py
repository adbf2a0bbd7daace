"""``/api/v1/ssh-keys``: OpenSSH public keys of the caller's organisation."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status
from starlette.requests import Request
from starlette.responses import Response

from cloudland_api import rowjson
from cloudland_api.services import ssh_keys as key_service
from cloudland_api.deps import CurrentUser, PageAfter, PageLimit, SessionDep, read
from cloudland_api.policy import allow
from cloudland_api.schemas import MAX_ID, ErrorResponse, SshKeyCreate, SshKeyList, SshKeyPublic

router = APIRouter(
    prefix="/ssh-keys",
    tags=["ssh-keys"],
    responses={401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}},
)
SshKeyId = Annotated[int, Path(ge=1, le=MAX_ID, description="SSH key id")]


@router.get("", response_model=SshKeyList, **allow("ssh_key", "read"))
async def list_ssh_keys(
    request: Request,
    caller: CurrentUser,
    limit: PageLimit = 50,
    after: PageAfter = None,
) -> Response:
    """One page of the organisation's SSH keys, by id; pass ``next_after`` back as ``after``."""
    keys, next_after = await read(request, key_service.list_ssh_keys, caller, limit, after)
    return rowjson.page(SshKeyList, keys, limit=limit, next_after=next_after)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SshKeyPublic,
             **allow("ssh_key", "create", responses={400: {"model": ErrorResponse}, 409: {"model": ErrorResponse}}))
def create_ssh_key(body: SshKeyCreate, session: SessionDep, caller: CurrentUser) -> Response:
    """Add an OpenSSH public key line (admin or member); it is stored normalised, with its fingerprint."""
    key = SshKeyPublic.model_validate(key_service.create_ssh_key(session, caller, body))
    return rowjson.dumped(key, status.HTTP_201_CREATED)


@router.get("/{key_id}", **allow("ssh_key", "read"))
def get_ssh_key(key_id: SshKeyId, session: SessionDep, caller: CurrentUser) -> SshKeyPublic:
    """One SSH key of the organisation."""
    return SshKeyPublic.model_validate(key_service.get_ssh_key(session, caller, key_id))


@router.delete("/{key_id}", status_code=status.HTTP_204_NO_CONTENT, **allow("ssh_key", "delete"))
def delete_ssh_key(key_id: SshKeyId, session: SessionDep, caller: CurrentUser) -> None:
    """Delete an SSH key (admin or member)."""
    key_service.delete_ssh_key(session, caller, key_id)
