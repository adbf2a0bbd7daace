"""Who is calling: sign-in and its backoff, the Caller every service takes (user, organisation,
role), and what ends a token before it expires (logout, a password change, a removed membership).

A token ends early in two ways, both checked on every request (``authenticate``):

- its ``jti`` is in ``revoked_tokens``: its holder logged out (that one token);
- its ``gen`` is below the user's ``token_generation``: the password changed or a membership was
  removed (every token of the user, in every organisation).

Failed sign-ins are slowed down per (username, address): the first ``FREE_FAILURES`` cost
nothing, then each further one makes the next try wait twice as long (1 s, 2 s, 4 s ... up to
``login_backoff_max_s``). A try while waiting is refused with 429 and ``Retry-After`` before the
password is even checked, a correct one included; a success forgets the failures. Unknown
usernames count the same, so neither a 401 nor a 429 tells which users exist; another address
keeps its own count, so an attacker elsewhere cannot lock the user out.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cloudland.errors import InvalidRequest, TooManyRequests, Unauthorized
from cloudland_api.db import for_change
from cloudland_api.models import LoginFailure, Membership, Organisation, RevokedToken, Role, User
from cloudland_api.security import TokenClaims, decode_token, hash_password, issue_token, verify_password

log = logging.getLogger(__name__)

FREE_FAILURES = 3         # failed sign-ins per (username, address) before the first wait
FIRST_WAIT_S = 1          # then 1 s, doubling with each further failure
FORGET_AFTER_S = 3600     # failures older than this are forgotten (and their rows pruned)


@dataclass(frozen=True)
class Caller:
    """The authenticated user, the organisation the token acts in, and the role there (the
    highest of their membership's and their groups', once ``projects.act_in`` resolved it)."""

    user_id: int
    username: str
    org_id: int
    role: Role
    operator: bool = False  # acting in the operator organisation (manages hypervisors, organisations)
    organisation: str = ""
    token_id: str = ""      # the token's jti: what a logout revokes
    expires_at: datetime | None = None
    credential_id: int | None = None  # acting through an application credential (services/credentials.py)
    # That credential's own role (a cap on every role the caller has) and the one project it acts in.
    credential_role: Role | None = None
    credential_project_id: int | None = None
    # The project the request acts in (services/projects.py ``act_in``) and the caller's role
    # there: the higher of their organisation role and their role on the project, None if neither.
    # project_id None: no project chosen (the control plane's own callers), rows of every project.
    project_id: int | None = None
    project: str = ""
    project_role: Role | None = None
    # The role that covers every project of the organisation (its membership's, unless
    # ``projects_only``, and its groups' on the organisation), capped; None: only single projects.
    all_projects_role: Role | None = None


@dataclass(frozen=True)
class Backoff:
    """How failed sign-ins are slowed down (the module's docstring)."""

    max_wait_s: int = 300

    def wait_after(self, failures: int) -> int:
        """Seconds the next try waits after ``failures`` failures in a row (0: none)."""
        if failures <= FREE_FAILURES:
            return 0
        return min(self.max_wait_s, FIRST_WAIT_S * 2 ** min(failures - FREE_FAILURES - 1, 30))


def check_not_waiting(session: Session, username: str, address: str, now: datetime) -> None:
    row = session.get(LoginFailure, (username, address))
    if row is not None and row.blocked_until is not None and row.blocked_until > now:
        wait = max(1, math.ceil((row.blocked_until - now).total_seconds()))
        raise TooManyRequests(f"too many failed sign-ins for {username!r} from {address}: try again in {wait} s",
                              retry_after=wait)


def count_failure(session: Session, backoff: Backoff, username: str, address: str) -> None:
    """One more failure of (username, address), committed; stale rows of anyone are pruned."""
    session.rollback()  # nothing else of this request is kept
    now = datetime.now(UTC)  # after the password's check, which takes a while: the wait starts now
    session.execute(delete(LoginFailure).where(LoginFailure.last_failed_at < now - timedelta(seconds=FORGET_AFTER_S)))
    for _ in range(2):  # a concurrent first failure may insert the row between our read and insert
        row = session.scalar(for_change(select(LoginFailure).where(LoginFailure.username == username,
                                                                    LoginFailure.address == address)))
        if row is None:
            row = LoginFailure(username=username, address=address, failures=0, last_failed_at=now)
            session.add(row)
        row.failures += 1
        row.last_failed_at = now
        wait = backoff.wait_after(row.failures)
        row.blocked_until = now + timedelta(seconds=wait) if wait else None
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            continue
        log.warning("event=login_failed username=%r address=%s failures=%d wait_s=%d", username, address,
                    row.failures, wait)
        return


def forget_failures(session: Session, username: str, address: str) -> None:
    session.execute(delete(LoginFailure).where(LoginFailure.username == username, LoginFailure.address == address))


def _verified_user(session: Session, backoff: Backoff, username: str, password: str, address: str) -> User:
    """The user whose password this is, or TooManyRequests (waiting) or Unauthorized (counted)."""
    check_not_waiting(session, username, address, datetime.now(UTC))
    user = session.scalar(select(User).where(User.username == username))
    if not verify_password(user.password_hash if user else None, password) or user is None:
        count_failure(session, backoff, username, address)
        raise Unauthorized("invalid username or password")
    forget_failures(session, username, address)
    return user


def check_lifetime(lifetime_s: int | None, default_s: int, ceiling_s: int) -> int:
    """The lifetime a new token gets: ``lifetime_s`` if asked for (InvalidRequest above the
    ceiling), else the default."""
    if lifetime_s is None:
        return default_s
    if lifetime_s > ceiling_s:
        raise InvalidRequest(f"lifetime_s {lifetime_s} is above the ceiling of {ceiling_s} s "
                             "(CLOUDLAND_API_TOKEN_MAX_LIFETIME_S)")
    return lifetime_s


def login(session: Session, key: bytes, lifetime_s: int, username: str, password: str, organisation: str | None = None,
          *, address: str = "unknown", backoff: Backoff | None = None) -> tuple[str, datetime]:
    """A token for valid credentials; Unauthorized with one message for every failure, and
    TooManyRequests while (username, address) waits after repeated failures.

    The same message for an unknown user and a wrong password: a caller must not learn
    which usernames exist.
    """
    user = _verified_user(session, backoff or Backoff(), username, password, address)
    query = select(Membership).join(Organisation).where(Membership.user_id == user.id).order_by(Membership.org_id)
    if organisation is not None:
        query = query.where(Organisation.name == organisation)
    membership = session.scalars(query).first()
    session.commit()  # the failures forgotten
    if membership is None:
        raise Unauthorized("user is not a member of " + (repr(organisation) if organisation else "any organisation"))
    log.info("event=login user_id=%d org_id=%d address=%s", user.id, membership.org_id, address)
    return issue_token(key, user.id, membership.org_id, lifetime_s, generation=user.token_generation)


def caller_for(session: Session, user_id: int, org_id: int, claims: TokenClaims | None = None) -> Caller:
    """The Caller a token names, re-read from the database so revoked memberships stop working;
    with the token's ``claims``, Unauthorized also when a logout or the user's token generation
    ended it."""
    revoked = exists().where(RevokedToken.token_id == (claims.token_id if claims else ""))
    row = session.execute(
        select(User.username, User.token_generation, Membership.role, Organisation.operator,
               Organisation.name.label("organisation"), revoked.label("revoked"))
        .join(Membership, Membership.user_id == User.id)
        .join(Organisation, Organisation.id == Membership.org_id)
        .where(User.id == user_id, Membership.org_id == org_id)
    ).first()
    if row is None:
        raise Unauthorized("token's user or membership no longer exists")
    if claims is not None and row.revoked:
        raise Unauthorized("token was revoked by a logout; log in again")
    if claims is not None and claims.generation < row.token_generation:
        raise Unauthorized("token was revoked: the password changed or a membership was removed since it was "
                           "issued; log in again")
    return Caller(user_id, row.username, org_id, row.role, bool(row.operator), row.organisation,
                  claims.token_id if claims else "", claims.expires_at if claims else None)


def authenticate(session: Session, key: bytes, token: str, max_lifetime_s: int) -> Caller:
    """The Caller a bearer token speaks for; Unauthorized, saying why, if it does not (any more)."""
    claims = decode_token(key, token, max_lifetime_s)
    return caller_for(session, claims.user_id, claims.org_id, claims)


def logout(session: Session, caller: Caller) -> None:
    """End the token the caller sent (it stays refused until it would have expired, then its row goes)."""
    if caller.credential_id is not None:
        raise InvalidRequest(f"an application credential does not log out: revoke it (DELETE "
                             f"/api/v1/app-credentials/{caller.credential_id})")
    if not caller.token_id:
        raise InvalidRequest("this token is your OpenID provider's: sign out there (it ends when it expires)")
    now = datetime.now(UTC)
    session.execute(delete(RevokedToken).where(RevokedToken.expires_at < now))
    session.add(RevokedToken(token_id=caller.token_id, user_id=caller.user_id, expires_at=caller.expires_at or now))
    try:
        session.commit()
    except IntegrityError:  # logged out twice at once: the token is revoked either way
        session.rollback()
    log.info("event=logout user_id=%d org_id=%d", caller.user_id, caller.org_id)


def end_tokens(user: User) -> None:
    """Every token ``user`` holds stops working (the caller commits)."""
    user.token_generation += 1


def change_password(session: Session, key: bytes, lifetime_s: int, caller: Caller, current: str, new: str,
                    *, address: str = "unknown", backoff: Backoff | None = None) -> tuple[str, datetime]:
    """Set the caller's password; every token they hold ends, and a new one for the caller's
    organisation is the answer. A wrong current password counts as a failed sign-in."""
    if caller.credential_id is not None:
        raise InvalidRequest("an application credential cannot change its creator's password: sign in as the user")
    source = session.scalar(select(User.source).where(User.id == caller.user_id))
    if source != "local":
        raise InvalidRequest(f"your password is kept by your organisation's {source.upper() if source else ''} "
                             "directory: change it there")
    try:
        user = _verified_user(session, backoff or Backoff(), caller.username, current, address)
    except Unauthorized as exc:  # not the token's fault: a 401 would send the user to log in again
        raise InvalidRequest("current_password is not your password") from exc
    if new == current:
        raise InvalidRequest("new_password is the current password")
    user = session.scalar(for_change(select(User).where(User.id == user.id)))
    assert user is not None
    user.password_hash = hash_password(new)
    end_tokens(user)
    session.commit()
    log.info("event=password_changed user_id=%d", user.id)
    return issue_token(key, user.id, caller.org_id, lifetime_s, generation=user.token_generation)
