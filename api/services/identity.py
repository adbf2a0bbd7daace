"""Who is calling: sign-in, and the Caller every service takes (user, organisation, role)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloudland.errors import Forbidden, Unauthorized
from cloudland_api.models import Membership, Organisation, Role, User
from cloudland_api.security import issue_token, verify_password

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Caller:
    """The authenticated user, the organisation the token acts in, and the role there."""

    user_id: int
    username: str
    org_id: int
    role: Role
    operator: bool = False  # acting in the operator organisation (manages hypervisors)

    def require(self, *roles: Role) -> None:
        """Raise Forbidden unless the caller holds one of ``roles``."""
        if self.role not in roles:
            allowed = " or ".join(r.value for r in roles)
            raise Forbidden(f"role {self.role.value!r} may not do this; needs {allowed}")


def login(
    session: Session, key: bytes, lifetime_s: int, username: str, password: str, organisation: str | None = None
) -> tuple[str, datetime]:
    """A token for valid credentials; Unauthorized with one message for every failure.

    The same message for an unknown user and a wrong password: a caller must not learn
    which usernames exist.
    """
    user = session.scalar(select(User).where(User.username == username))
    if not verify_password(user.password_hash if user else None, password) or user is None:
        raise Unauthorized("invalid username or password")
    query = select(Membership).join(Organisation).where(Membership.user_id == user.id).order_by(Membership.org_id)
    if organisation is not None:
        query = query.where(Organisation.name == organisation)
    membership = session.scalars(query).first()
    if membership is None:
        raise Unauthorized("user is not a member of " + (repr(organisation) if organisation else "any organisation"))
    log.info("event=login user_id=%d org_id=%d", user.id, membership.org_id)
    return issue_token(key, user.id, membership.org_id, lifetime_s)


def caller_for(session: Session, user_id: int, org_id: int) -> Caller:
    """The Caller a token names, re-read from the database so revoked memberships stop working."""
    row = session.execute(
        select(User.username, Membership.role, Organisation.operator)
        .join(Membership, Membership.user_id == User.id)
        .join(Organisation, Organisation.id == Membership.org_id)
        .where(User.id == user_id, Membership.org_id == org_id)
    ).first()
    if row is None:
        raise Unauthorized("token's user or membership no longer exists")
    return Caller(user_id, row.username, org_id, row.role, bool(row.operator))
