"""The declarative base and the column types every model shares."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Dialect
from sqlalchemy.orm import DeclarativeBase, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    """Now, timezone-aware in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every database.

    SQLite drops the offset on the way in, so without this the same row would read back
    naive there and aware on PostgreSQL, and API responses would differ between them.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime; use timezone-aware UTC")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """The declarative base; ``Base.metadata`` is what the migrations describe."""


def depends_on(target: str) -> Any:
    """A many-to-one link to ``target`` whose one job is the order of a flush.

    The session's unit of work orders the inserts of one flush by relationship(), not by
    foreign keys: rows of unlinked models go in the order of their module and class names,
    so an instance added with its new hypervisor in one flush would come first and break the
    foreign key. Never loaded (``lazy="raise"``): code reads the ``*_id`` columns.
    """
    return relationship(target, lazy="raise")
