"""Bootable disk images of an organisation."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import BigInteger, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from cloudland_api.models.base import Base, UTCDateTime, depends_on, utcnow
from cloudland_api.models.projects import ProjectOwned

if TYPE_CHECKING:
    from cloudland_api.models.identity import Organisation


class Image(ProjectOwned, Base):
    """A bootable disk image of a project (name unique there): metadata here, bytes in the image directory."""

    __tablename__ = "images"
    # sqlite_autoincrement: never reuse a deleted image's id on SQLite (PostgreSQL never does),
    # so an upload still streaming into a deleted image cannot land in a new one with its id.
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_images_project_name"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organisations.id", ondelete="CASCADE"), index=True)
    org: Mapped[Organisation] = depends_on("Organisation")
    name: Mapped[str] = mapped_column(String(64))
    arch: Mapped[str] = mapped_column(String(16), default="x86_64")
    disk_format: Mapped[str] = mapped_column(String(16), default="qcow2")
    status: Mapped[str] = mapped_column(String(16), default="queued")  # queued | saving | active | error
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
