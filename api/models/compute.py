"""What a tenant runs: flavors, SSH keys and instances (VMs)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from cloudland_api.models.base import Base, UTCDateTime, depends_on, utcnow
from cloudland_api.models.projects import ProjectOwned

if TYPE_CHECKING:
    from cloudland_api.models.hypervisors import Hypervisor
    from cloudland_api.models.identity import Organisation
    from cloudland_api.models.images import Image


class Flavor(Base):
    """A VM size an organisation offers: name unique within the organisation."""

    __tablename__ = "flavors"
    __table_args__ = (
        UniqueConstraint("org_id", "name", name="uq_flavors_org_name"),
        # The database refuses nonsense even if a caller bypasses the API schemas.
        CheckConstraint("vcpus > 0 AND memory_mib > 0 AND disk_gib >= 0", name="ck_flavors_positive"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organisations.id", ondelete="CASCADE"), index=True)
    org: Mapped[Organisation] = depends_on("Organisation")
    name: Mapped[str] = mapped_column(String(64))
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    disk_gib: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SshKey(ProjectOwned, Base):
    """An SSH public key of a project, injected into instances that name it; name unique in the project."""

    __tablename__ = "ssh_keys"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_ssh_keys_project_name"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organisations.id", ondelete="CASCADE"), index=True)
    org: Mapped[Organisation] = depends_on("Organisation")
    name: Mapped[str] = mapped_column(String(64))
    public_key: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Instance(ProjectOwned, Base):
    """A VM of an organisation: its desired shape, where it was placed, and its last known status.

    Size is copied from the flavor at create, so deleting a flavor never changes a VM.
    The domain on the hypervisor is named ``cl-<uuid>``, unique across tenants. A deleted
    instance keeps its row (status ``deleted``) so its jobs keep their subject; live
    names are unique per project through a partial index (they are the VPC's DNS names).
    """

    __tablename__ = "instances"
    __table_args__ = (
        Index("uq_instances_project_live_name", "project_id", "name", unique=True,
              sqlite_where=text("status != 'deleted'"), postgresql_where=text("status != 'deleted'")),
        Index("ix_instances_org_id_id", "org_id", "id"),
        Index("ix_instances_hypervisor_id", "hypervisor_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organisations.id", ondelete="CASCADE"))
    org: Mapped[Organisation] = depends_on("Organisation")
    name: Mapped[str] = mapped_column(String(64))
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    flavor_id: Mapped[int | None] = mapped_column(ForeignKey("flavors.id", ondelete="SET NULL"), nullable=True)
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="SET NULL"), nullable=True)
    ssh_key_id: Mapped[int | None] = mapped_column(ForeignKey("ssh_keys.id", ondelete="SET NULL"), nullable=True)
    flavor: Mapped[Flavor | None] = depends_on("Flavor")
    image: Mapped[Image | None] = depends_on("Image")
    ssh_key: Mapped[SshKey | None] = depends_on("SshKey")
    # cloud-init user data, handed to the guest on its config drive (at most 64 KiB, as nova).
    user_data: Mapped[str | None] = mapped_column(Text, nullable=True)
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    disk_gib: Mapped[int] = mapped_column(Integer)
    arch: Mapped[str] = mapped_column(String(16), default="x86_64")
    hypervisor_id: Mapped[int | None] = mapped_column(ForeignKey("hypervisors.id"), nullable=True)
    hypervisor: Mapped[Hypervisor | None] = depends_on("Hypervisor")
    # building | running | stopped | error | deleting | deleted
    status: Mapped[str] = mapped_column(String(16), default="building")
    status_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The job now acting on the instance: one at a time (per-VM serialisation at the API).
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    @property
    def domain_name(self) -> str:
        """The libvirt domain's name on the hypervisor."""
        return f"cl-{self.uuid}"
