"""The one tenant-scoped CRUD helper every service builds on.

Every tenant-owned model has ``id`` and ``org_id``; the named ones also ``name``, unique in
their organisation. Every read here filters on the caller's ``org_id``, so another
organisation's row is NotFound, never Forbidden, and ids cannot be probed. A service decides
NotFound (here) before Forbidden (``Caller.require``), and commits only what it changed.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cloudland.errors import Conflict, NotFound
from cloudland_api.db import for_change
from cloudland_api.services.identity import Caller

log = logging.getLogger(__name__)


class Owned(Protocol):
    """A tenant-owned row: what every helper here needs of a model."""

    id: Any
    org_id: Any


Row = TypeVar("Row", bound=Owned)


def scoped(model: type[Row], caller: Caller) -> Select[tuple[Row]]:
    """Every row of ``model`` in the caller's organisation."""
    return select(model).where(model.org_id == caller.org_id)


def page(session: Session, model: type[Row], caller: Caller, limit: int, offset: int) -> tuple[list[Row], int]:
    """One page of the caller's organisation's rows of ``model``, ordered by id, and the total count."""
    scope = model.org_id == caller.org_id
    total = session.scalar(select(func.count()).select_from(model).where(scope)) or 0
    rows = session.scalars(select(model).where(scope).order_by(model.id).limit(limit).offset(offset))
    return list(rows), total


def get(session: Session, model: type[Row], caller: Caller, ref: int | str, what: str, *, lock: bool = False) -> Row:
    """The caller's organisation's row of ``model`` named by id (int) or by name (str), or
    NotFound naming ``what`` and the reference.

    ``lock``: for a change; on PostgreSQL a second request acting on the same row waits here
    for the first to commit (SQLite's write transactions are serial anyway).
    """
    columns: Any = model
    query = scoped(model, caller).where((columns.id if isinstance(ref, int) else columns.name) == ref)
    row = session.scalar(for_change(query) if lock else query)
    if row is None:
        raise NotFound(f"{what} {ref!r} not found")
    return row


def insert_named(session: Session, row: Row, what: str, commit: bool = True) -> Row:
    """``row`` added, its name unique in its organisation, else Conflict. Committed, or with
    ``commit`` False flushed only (its id known) for the caller to commit with more rows."""
    model: Any = type(row)
    name = getattr(row, "name")
    taken = f"{what} name {name!r} is already used in this organisation"
    if session.scalar(select(model.id).where(model.org_id == row.org_id, model.name == name)) is not None:
        raise Conflict(taken)
    session.add(row)
    try:
        session.commit() if commit else session.flush()
    except IntegrityError as exc:
        # Two creates raced past the check above; the unique constraint decided.
        session.rollback()
        raise Conflict(taken) from exc
    return row


def delete(session: Session, row: Row, caller: Caller, what: str) -> None:
    """Delete ``row`` (already read with ``get``, and the caller's role checked), commit, log."""
    session.delete(row)
    session.commit()
    log.info("event=%s_deleted org_id=%d %s_id=%d user_id=%d", what.replace(" ", "_"), caller.org_id,
             what.replace(" ", "_"), row.id, caller.user_id)
