"""Organisations' directories: the LDAP server or OpenID provider an organisation's people sign in
with, as operators configure them (one of each kind per organisation at most).

The LDAP bind password is a secret: it is written to ``<state_dir>/directories/ldap-org<id>.password``
(directory 0700, file 0600, replaced atomically), never to the database, a log line or an answer.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloudland.errors import NotFound
from cloudland_api.models import Directory, Organisation, Role
from cloudland_api.schemas import LdapSettings, OidcSettings

log = logging.getLogger(__name__)

LDAP = "ldap"
OIDC = "oidc"
_NAMES = {LDAP: "LDAP directory", OIDC: "OpenID provider"}
ROLE_ORDER = (Role.reader, Role.member, Role.admin)


def higher(*roles: Role | None) -> Role | None:
    """The highest of ``roles`` (None: no role)."""
    present = [r for r in roles if r is not None]
    return max(present, key=ROLE_ORDER.index) if present else None


def _secret_path(state_dir: Path, org_id: int) -> Path:
    return state_dir / "directories" / f"ldap-org{org_id}.password"


def _write_secret(path: Path, secret: str) -> None:
    """``path`` holds ``secret`` (0600 from its first byte), replacing an older one atomically."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    staged = path.with_name(path.name + ".new")
    staged.unlink(missing_ok=True)
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret)
    os.replace(staged, path)


def erase_secret(state_dir: Path, org_id: int) -> None:
    """Remove organisation ``org_id``'s LDAP bind password, if it has one."""
    _secret_path(state_dir, org_id).unlink(missing_ok=True)


def bind_password(state_dir: Path, org_id: int) -> str:
    """The LDAP bind password of organisation ``org_id`` (empty when its file is gone)."""
    try:
        return _secret_path(state_dir, org_id).read_text()
    except FileNotFoundError:
        return ""


def _organisation(session: Session, org_id: int) -> Organisation:
    org = session.get(Organisation, org_id)
    if org is None:
        raise NotFound(f"organisation {org_id} not found")
    return org


def get(session: Session, org_id: int, kind: str) -> Directory:
    """Organisation ``org_id``'s directory of ``kind``, or NotFound naming what is missing."""
    org = _organisation(session, org_id)
    row = session.get(Directory, (org_id, kind))
    if row is None:
        raise NotFound(f"organisation {org.name!r} has no {_NAMES[kind]} configured")
    return row


def find(session: Session, organisation: str, kind: str) -> tuple[Organisation, Directory] | None:
    """The organisation named ``organisation`` and its directory of ``kind``, or None."""
    row = session.execute(select(Organisation, Directory).join(Directory, Directory.org_id == Organisation.id)
                          .where(Organisation.name == organisation, Directory.kind == kind)).first()
    return (row[0], row[1]) if row is not None else None


def put(session: Session, state_dir: Path, org_id: int, spec: LdapSettings | OidcSettings,
        actor_id: int) -> Directory:
    """Configure (or reconfigure) organisation ``org_id``'s directory."""
    org = _organisation(session, org_id)
    kind = LDAP if isinstance(spec, LdapSettings) else OIDC
    settings: dict[str, Any] = spec.model_dump(exclude={"bind_password"})
    if isinstance(spec, LdapSettings):
        _write_secret(_secret_path(state_dir, org_id), spec.bind_password)
    row = session.get(Directory, (org_id, kind))
    if row is None:
        row = Directory(org_id=org_id, kind=kind, settings=settings)
        session.add(row)
    else:
        row.settings = settings
    session.commit()
    where = settings.get("url") or settings.get("issuer")
    log.info("event=directory_configured org_id=%d organisation=%s kind=%s at=%s user_id=%d", org_id, org.name,
             kind, where, actor_id)
    return row


def delete(session: Session, state_dir: Path, org_id: int, kind: str, actor_id: int) -> None:
    """Forget organisation ``org_id``'s directory of ``kind`` (its users stay, unable to sign in
    until a directory is configured again)."""
    row = get(session, org_id, kind)
    session.delete(row)
    session.commit()
    if kind == LDAP:
        erase_secret(state_dir, org_id)
    log.info("event=directory_removed org_id=%d kind=%s user_id=%d", org_id, kind, actor_id)


def role_for(groups: list[str], roles: dict[str, str]) -> Role | None:
    """The highest role that any of ``groups`` (names or DNs, any case) maps to, or None."""
    wanted = {name.lower(): Role(role) for name, role in roles.items()}
    return higher(*(wanted[g.lower()] for g in groups if g.lower() in wanted))
