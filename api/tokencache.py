"""Verified bearer tokens, kept for a moment (issue 15: authenticating was ~20 % of the API's CPU).

Every request proved its token again: an HS256 verification (or an application credential's
SHA-256, or a provider's RS256) and a query re-reading the membership and role. Under load the
same tokens come back many times a second, so ``TokenCache`` keeps what a token proved (the
``Caller``) for ``ttl_s`` seconds, keyed by the token's SHA-256 (the token itself is not kept).

Revocation is not delayed in this process. Every commit that changed a row of the identity
models (``api/models/identity.py``: users, memberships, organisations, revoked tokens,
directories, application credentials; not the failed sign-ins' counts), of the projects and
their role grants (``api/models/projects.py``; a cached caller carries its project and role) or
of the groups, their members and roles (``api/models/groups.py``) moves the process-wide
``epoch`` on, at the flush and again at the commit, and an entry is good only under the epoch it
was read in. An entry read while such a change was in flight is stored under the old epoch, so
it is never used. A logout, a password change, a removed membership or a role change is thus
seen by the next request. A change made by another process on the same database (a second API)
is seen within ``ttl_s``; an entry never outlives its token's expiry.
"""

from __future__ import annotations

import hashlib
import threading
import time
from datetime import UTC, datetime

from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session

from cloudland_api.models import Group, GroupMember, GroupProjectRole, LoginFailure
from cloudland_api.models.projects import Project, ProjectRole
from cloudland_api.models.base import Base
from cloudland_api.services.identity import Caller

TTL_S = 2.0
MAX_ENTRIES = 10_000  # a flood of distinct tokens clears the cache rather than grow it
IDENTITY_MODULE = "cloudland_api.models.identity"


class _Epoch:
    """A counter moved on by every change to the identity tables, in any session of the process."""

    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def bump(self) -> None:
        with self._lock:
            self.value += 1


epoch = _Epoch()
_CHANGED = "cloudland_identity_changed"  # Session.info: this transaction changed an identity row


def _identity_tables() -> frozenset[str]:
    tables = {mapper.local_table.name for mapper in Base.registry.mappers  # type: ignore[attr-defined]
              if mapper.class_.__module__ == IDENTITY_MODULE and mapper.class_ is not LoginFailure}
    # A caller's project, their role there, and the groups that give them roles.
    return frozenset(tables | {model.__tablename__ for model in (Project, ProjectRole, Group, GroupMember,
                                                                 GroupProjectRole)})


_tables: frozenset[str] | None = None


def _is_identity(table_name: str) -> bool:
    global _tables
    if _tables is None:
        _tables = _identity_tables()
    return table_name in _tables


@event.listens_for(Session, "after_flush")
def _after_flush(session: Session, _context: object) -> None:
    for obj in (*session.new, *session.dirty, *session.deleted):
        table = getattr(obj, "__tablename__", None)
        if table is not None and _is_identity(table):
            session.info[_CHANGED] = True
            epoch.bump()
            return


@event.listens_for(Session, "do_orm_execute")
def _bulk_change(state: ORMExecuteState) -> None:
    # update(...) / delete(...) statements bypass the flush.
    if (state.is_update or state.is_delete or state.is_insert) and state.bind_mapper is not None \
            and _is_identity(state.bind_mapper.local_table.name):
        state.session.info[_CHANGED] = True
        epoch.bump()


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    if session.info.pop(_CHANGED, False):
        epoch.bump()


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(_CHANGED, None)


class TokenCache:
    """Callers proven by tokens, by the tokens' SHA-256, good for ``ttl_s`` under one epoch."""

    def __init__(self, ttl_s: float = TTL_S) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[bytes, tuple[Caller, int, float]] = {}

    @staticmethod
    def key(token: str) -> bytes:
        return hashlib.sha256(token.encode()).digest()

    def get(self, key: bytes) -> Caller | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        caller, read_in, until = entry
        if read_in != epoch.value or time.monotonic() >= until:
            self._entries.pop(key, None)
            return None
        return caller

    def put(self, key: bytes, caller: Caller, read_in: int) -> None:
        """Keep ``caller``, proven from the database as it was at epoch ``read_in`` (taken before
        the reads): nothing is kept if an identity row changed since."""
        if read_in != epoch.value:
            return
        ttl = self.ttl_s
        if caller.expires_at is not None:
            ttl = min(ttl, (caller.expires_at - datetime.now(UTC)).total_seconds())
            if ttl <= 0:
                return
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[key] = (caller, read_in, time.monotonic() + ttl)
