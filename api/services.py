"""What the API does, apart from HTTP: every function takes the caller and raises domain errors.

Every query on a tenant-owned table filters on the caller's ``org_id``. Another
organisation's row is therefore NotFound, not Forbidden, so ids cannot be probed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cloudland.errors import Conflict, Forbidden, NotFound, Unauthorized
from cloudland_api.models import Flavor, Membership, Organisation, Role, User
from cloudland_api.schemas import FlavorCreate
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


def list_flavors(session: Session, caller: Caller, limit: int, offset: int) -> tuple[list[Flavor], int]:
    """One page of the caller's organisation's flavors, ordered by id, and the total count."""
    scope = Flavor.org_id == caller.org_id
    total = session.scalar(select(func.count()).select_from(Flavor).where(scope)) or 0
    page = session.scalars(select(Flavor).where(scope).order_by(Flavor.id).limit(limit).offset(offset))
    return list(page), total


def get_flavor(session: Session, caller: Caller, flavor_id: int) -> Flavor:
    """The caller's organisation's flavor ``flavor_id``, or NotFound."""
    flavor = session.scalar(select(Flavor).where(Flavor.id == flavor_id, Flavor.org_id == caller.org_id))
    if flavor is None:
        raise NotFound(f"flavor {flavor_id} not found")
    return flavor


def create_flavor(session: Session, caller: Caller, spec: FlavorCreate) -> Flavor:
    """Create a flavor in the caller's organisation (admin or member)."""
    caller.require(Role.admin, Role.member)
    taken = select(Flavor.id).where(Flavor.org_id == caller.org_id, Flavor.name == spec.name)
    if session.scalar(taken) is not None:
        raise Conflict(f"flavor name {spec.name!r} is already used in this organisation")
    flavor = Flavor(org_id=caller.org_id, **spec.model_dump())
    session.add(flavor)
    try:
        session.commit()
    except IntegrityError as exc:
        # Two creates raced past the check above; the unique constraint decided.
        session.rollback()
        raise Conflict(f"flavor name {spec.name!r} is already used in this organisation") from exc
    log.info("event=flavor_created org_id=%d flavor_id=%d user_id=%d", caller.org_id, flavor.id, caller.user_id)
    return flavor


def delete_flavor(session: Session, caller: Caller, flavor_id: int) -> None:
    """Delete the caller's organisation's flavor ``flavor_id`` (admin only)."""
    flavor = get_flavor(session, caller, flavor_id)  # NotFound before Forbidden: no probing
    caller.require(Role.admin)
    session.delete(flavor)
    session.commit()
    log.info("event=flavor_deleted org_id=%d flavor_id=%d user_id=%d", caller.org_id, flavor_id, caller.user_id)
