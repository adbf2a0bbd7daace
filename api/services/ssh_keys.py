"""SSH public keys of an organisation, injected into instances that name them (tenant-scoped, ``crud``)."""

from __future__ import annotations

import logging

from sqlalchemy import RowMapping
from sqlalchemy.orm import Session

from cloudland.errors import InvalidRequest
from cloudland_api.models import SshKey
from cloudland_api.openssh import parse_public_key
from cloudland_api.schemas import SshKeyCreate, SshKeyPublic
from cloudland_api.services import crud
from cloudland_api.services.identity import Caller

log = logging.getLogger(__name__)


def list_ssh_keys(session: Session, caller: Caller, limit: int, after: str | None) -> tuple[list[RowMapping], str | None]:
    """One page of the caller's organisation's SSH keys by id, and the next page's cursor; the keys
    as rows of SshKeyPublic's columns (crud "hot reads as rows")."""
    return crud.page_rows(session, SshKey, SshKeyPublic, caller, limit, after, "ssh_keys", list, {})


def get_ssh_key(session: Session, caller: Caller, ref: int | str) -> SshKey:
    """The caller's organisation's SSH key by id or name, or NotFound."""
    return crud.get(session, SshKey, caller, ref, "ssh key")


def create_ssh_key(session: Session, caller: Caller, spec: SshKeyCreate) -> SshKey:
    """Validate and store an OpenSSH public key line (admin or member), normalised."""
    try:
        parsed = parse_public_key(spec.public_key)
    except InvalidRequest as exc:
        raise InvalidRequest(f"ssh key {spec.name!r}: {exc}") from exc
    row = SshKey(**crud.owner(caller), name=spec.name, public_key=parsed.line, fingerprint=parsed.fingerprint)
    key = crud.insert_named(session, row, "ssh key")
    log.info("event=ssh_key_created org_id=%d ssh_key_id=%d fingerprint=%s user_id=%d",
             caller.org_id, key.id, key.fingerprint, caller.user_id)
    return key


def delete_ssh_key(session: Session, caller: Caller, key_id: int) -> None:
    """Delete an SSH key (admin or member); instances that named it keep running."""
    key = get_ssh_key(session, caller, key_id)
    crud.delete(session, key, caller, "ssh key")
