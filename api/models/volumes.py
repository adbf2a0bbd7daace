"""Volumes: block storage that outlives VMs, their snapshots and attachments (issue 13).

A volume lives in one *backend* (proto/v1/storage.proto): ``local`` (qcow2 files on one
hypervisor, ``hypervisor_id``, so it attaches only to VMs there) or a shared (rbd) one that
every hypervisor reaches. Its ``type`` is the operator's name for a backend
(``CLOUDLAND_API_VOLUME_TYPES``). ``job_id`` is the job acting on it now: one at a time.

An attachment is an object with an id: the database allocates its device name (unique per
instance) and allows one attachment per volume (a unique constraint, the last word when 50
attaches race); device ``vda`` is a VM's boot volume (its root disk, made with the VM). Ids are
never reused (``sqlite_autoincrement``), so a detach that names an old
attachment can never remove a newer one. A snapshot belongs to its volume, which cannot be
deleted while it has any.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Index, Integer, String, Text, UniqueConstraint, false, select
from sqlalchemy.orm import Mapped, column_property, mapped_column

from cloudland_api.models.base import Base, UTCDateTime, depends_on, utcnow
from cloudland_api.models.compute import Instance
from cloudland_api.models.projects import ProjectOwned

if TYPE_CHECKING:
    from cloudland_api.models.hypervisors import Hypervisor
    from cloudland_api.models.identity import Organisation


class Volume(ProjectOwned, Base):
    """A volume of an organisation: its size, type and backend, where a local one lives, its status."""

    __tablename__ = "volumes"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_volumes_project_name"),
                      CheckConstraint("size_gib > 0", name="ck_volumes_size"),
                      Index("ix_volumes_org_id_id", "org_id", "id"),
                      {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organisations.id", ondelete="CASCADE"))
    org: Mapped[Organisation] = depends_on("Organisation")
    name: Mapped[str] = mapped_column(String(64))
    size_gib: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(64))      # the operator's volume type
    backend: Mapped[str] = mapped_column(String(64))   # the agents' backend: "local" or an rbd one's name
    # A local volume's hypervisor (chosen at create); None for a shared backend's.
    hypervisor_id: Mapped[int | None] = mapped_column(ForeignKey("hypervisors.id"), nullable=True)
    hypervisor: Mapped[Hypervisor | None] = depends_on("Hypervisor")
    source_image_id: Mapped[int | None] = mapped_column(Integer, nullable=True)     # made from it (no FK: it may go)
    source_snapshot_id: Mapped[int | None] = mapped_column(Integer, nullable=True)  # made from it (no FK: it may go)
    # creating | available | error | deleting
    status: Mapped[str] = mapped_column(String(16), default="creating")
    status_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class VolumeSnapshot(ProjectOwned, Base):
    """A volume's content at one moment; a new volume can be made from it."""

    __tablename__ = "volume_snapshots"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_volume_snapshots_project_name"),
                      Index("ix_volume_snapshots_volume_id", "volume_id"),
                      {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organisations.id", ondelete="CASCADE"))
    org: Mapped[Organisation] = depends_on("Organisation")
    volume_id: Mapped[int] = mapped_column(ForeignKey("volumes.id", ondelete="RESTRICT"))
    volume: Mapped[Volume] = depends_on("Volume")
    name: Mapped[str] = mapped_column(String(64))
    size_gib: Mapped[int] = mapped_column(Integer)     # the volume's when taken
    # creating | available | error | deleting
    status: Mapped[str] = mapped_column(String(16), default="creating")
    status_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class VolumeAttachment(ProjectOwned, Base):
    """One volume on one instance as ``device``; ``attaching`` and ``detaching`` last as long as
    their job, which always ends (the job engine's guarantee): then it is ``attached`` or gone."""

    __tablename__ = "volume_attachments"
    __table_args__ = (UniqueConstraint("volume_id", name="uq_volume_attachments_volume"),
                      UniqueConstraint("instance_id", "device", name="uq_volume_attachments_instance_device"),
                      Index("ix_volume_attachments_org_id_id", "org_id", "id"),
                      {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organisations.id", ondelete="CASCADE"))
    org: Mapped[Organisation] = depends_on("Organisation")
    volume_id: Mapped[int] = mapped_column(ForeignKey("volumes.id", ondelete="RESTRICT"))
    volume: Mapped[Volume] = depends_on("Volume")
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    instance: Mapped[Instance] = depends_on("Instance")
    device: Mapped[str] = mapped_column(String(8))     # vdb, vdc...; vda: the instance boots from it
    status: Mapped[str] = mapped_column(String(16), default="attaching")  # attaching | attached | detaching
    # A boot volume's: deleted with its instance (default False: the data is the tenant's to keep).
    delete_on_termination: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


# An instance's boot volume (issue 13): its ``vda`` attachment's volume, read with the instance in
# the same SELECT (one lookup in the (instance_id, device) unique index per row), None for a VM
# with an image's disk.
Instance.boot_volume_id = column_property(
    select(VolumeAttachment.volume_id)
    .where(VolumeAttachment.instance_id == Instance.id, VolumeAttachment.device == "vda")
    .correlate_except(VolumeAttachment)
    .scalar_subquery())
