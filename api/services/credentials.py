"""Application credentials (issue 14): secrets for scripts and integrations, sent as the bearer
token (``Authorization: Bearer cla_<id>_<secret>``) where a user would send a login's token.

- A signed-in user makes one for the project their request acts in (its organisation's), with a
  role no higher than theirs there and an expiry (at most ``MAX_LIFETIME_S``); the secret is in
  the answer once and only its SHA-256 is kept.
- It acts in that project only: a request naming another (``X-CloudLand-Project``) is refused
  (403, saying which project it is bound to); one naming none acts in it.
- Each request re-reads the credential and its creator's membership and groups: the credential
  acts with the lower of its own role and the creator's current one (there, and on the
  organisation's own things), so demoting the creator demotes their credentials, and removing the
  membership (or the user), or deleting the project, ends them; so does the expiry, and a
  revocation (``DELETE``), which deletes the row.
- A credential cannot make another, change a password or log out (revoke it instead).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloudland.errors import Forbidden, InvalidRequest, NotFound, Unauthorized
from cloudland_api.models import AppCredential, Membership, Organisation, Project, Role, User
from cloudland_api.services import crud
from cloudland_api.services.directories import ROLE_ORDER
from cloudland_api.services.identity import Caller

log = logging.getLogger(__name__)

PREFIX = "cla_"
MAX_LIFETIME_S = 366 * 86400
_FORMAT = re.compile(r"^cla_([0-9]{1,10})_([0-9a-f]{64})$")


def is_credential(token: str) -> bool:
    """Whether a bearer token is an application credential (rather than a login's JWT)."""
    return token.startswith(PREFIX)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create(session: Session, caller: Caller, name: str, role: str | None, lifetime_s: int) -> tuple[AppCredential, str]:
    """A new credential of the caller's, bound to the project the request acts in, and its secret
    (shown once)."""
    if caller.credential_id is not None:
        raise InvalidRequest("an application credential cannot make another: sign in as the user")
    mine = caller.project_role
    if mine is None or caller.project_id is None:
        raise Forbidden(f"you hold no role in project {caller.project!r}: a credential acts there with a role "
                        "no higher than yours")
    wanted = Role(role) if role is not None else mine
    if ROLE_ORDER.index(wanted) > ROLE_ORDER.index(mine):
        raise Forbidden(f"role {wanted.value!r} is above yours ({mine.value!r}) in project {caller.project!r} "
                        f"of {caller.organisation!r}")
    secret = secrets.token_hex(32)
    row = AppCredential(user_id=caller.user_id, org_id=caller.org_id, project_id=caller.project_id, name=name,
                        secret_sha256=_digest(secret), role=wanted,
                        expires_at=(datetime.now(UTC) + timedelta(seconds=lifetime_s)).replace(microsecond=0))
    session.add(row)
    session.commit()
    log.info("event=app_credential_created credential_id=%d user_id=%d org_id=%d project_id=%d role=%s", row.id,
             caller.user_id, caller.org_id, caller.project_id, wanted.value)
    return row, f"{PREFIX}{row.id}_{secret}"


def _own(caller: Caller) -> object:
    return select(AppCredential).where(AppCredential.user_id == caller.user_id, AppCredential.org_id == caller.org_id)


def page(session: Session, caller: Caller, limit: int, after: str | None) -> tuple[list[AppCredential], str | None]:
    """One page of the caller's credentials in their organisation, by id."""
    return crud.keyset(session, _own(caller), [AppCredential.id], limit, after)  # type: ignore[arg-type]


def revoke(session: Session, caller: Caller, credential_id: int) -> None:
    """Delete one of the caller's credentials: it stops working at once."""
    row = session.scalar(_own(caller).where(AppCredential.id == credential_id))  # type: ignore[attr-defined]
    if row is None:
        raise NotFound(f"application credential {credential_id} not found")
    session.delete(row)
    session.commit()
    log.info("event=app_credential_revoked credential_id=%d user_id=%d", credential_id, caller.user_id)


def authenticate(session: Session, token: str) -> Caller:
    """The Caller an application credential acts as; Unauthorized, saying why, if it does not."""
    match = _FORMAT.match(token)
    if match is None:
        raise Unauthorized("invalid application credential")
    row = session.execute(
        select(AppCredential, User.username, Membership.role.label("member_role"), Organisation.operator,
               Organisation.name.label("organisation"))
        .join(User, User.id == AppCredential.user_id)
        .join(Membership, (Membership.user_id == AppCredential.user_id) & (Membership.org_id == AppCredential.org_id))
        .join(Organisation, Organisation.id == AppCredential.org_id)
        .join(Project, (Project.id == AppCredential.project_id) & (Project.org_id == AppCredential.org_id))
        .where(AppCredential.id == int(match.group(1)))).first()
    if row is None or not hmac.compare_digest(row.AppCredential.secret_sha256, _digest(match.group(2))):
        raise Unauthorized("application credential is revoked, unknown, or its creator left the organisation")
    credential: AppCredential = row.AppCredential
    if credential.expires_at <= datetime.now(UTC):
        raise Unauthorized(f"application credential {credential.id} expired at {credential.expires_at.isoformat()}")
    # The creator's membership role; projects.act_in raises it by their groups', then caps every
    # role at the credential's own and keeps the request in the credential's project.
    return Caller(credential.user_id, row.username, credential.org_id, row.member_role, bool(row.operator),
                  row.organisation, "", credential.expires_at, credential_id=credential.id,
                  credential_role=credential.role, credential_project_id=credential.project_id)
