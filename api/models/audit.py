"""The audit trail: one row per request that could change something, and per sign-in, success or
failure (api/audit.py writes them; nothing in the API updates or deletes them)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from cloudland_api.models.base import Base, UTCDateTime, utcnow


class AuditEvent(Base):
    """Who did what, where, from which address, when, and how it ended. Ids and names are copied,
    not foreign keys: the record outlives the user and the organisation it names."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_resource", "resource_type", "resource_id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    org_id: Mapped[int | None] = mapped_column(Integer, index=True, nullable=True)
    user_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The caller's username, or for a sign-in the one it gave (even an unknown one).
    username: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The project the request acted in, and the resource it named: its policy entry's type
    # ("instance") and the id its path gave, or for a create the id of what it made (api/audit.py).
    project_id: Mapped[int | None] = mapped_column(Integer, index=True, nullable=True)
    resource_type: Mapped[str | None] = mapped_column(String(32), nullable=True)
    resource_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(String(512))
    status: Mapped[int] = mapped_column(Integer)
    address: Mapped[str] = mapped_column(String(64))
