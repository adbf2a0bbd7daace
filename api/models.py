"""Database models (SQLAlchemy 2, typed). API schemas live in ``schemas.py``, not here.

Every tenant-owned row carries ``org_id``; queries filter on it (see ``services.py``).
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
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


class Role(str, enum.Enum):
    """What a member may do in an organisation, from most to least."""

    admin = "admin"      # everything, including deletes
    member = "member"    # create and read
    reader = "reader"    # read only


class Organisation(Base):
    """A tenant: owns resources; users act in it through a Membership."""

    __tablename__ = "organisations"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # The operator organisation (the first one) manages hypervisors for every tenant.
    operator: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    memberships: Mapped[list[Membership]] = relationship(back_populates="org", cascade="all, delete-orphan")


class User(Base):
    """A person or robot that logs in; only an argon2 hash of the password is kept."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    memberships: Mapped[list[Membership]] = relationship(back_populates="user", cascade="all, delete-orphan")


class Membership(Base):
    """A user's role in one organisation."""

    __tablename__ = "memberships"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organisations.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[Role] = mapped_column(Enum(Role, name="role", native_enum=False, length=16))

    user: Mapped[User] = relationship(back_populates="memberships")
    org: Mapped[Organisation] = relationship(back_populates="memberships")


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
    name: Mapped[str] = mapped_column(String(64))
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    disk_gib: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Hypervisor(Base):
    """A host of the tree, as its agent reports it, with the operator's settings and the claims.

    Not tenant-owned: the operator organisation manages hypervisors. ``id`` is the tree's
    hypervisor id. ``vcpus_claimed``/``memory_claimed_mib`` are what placed instances hold;
    the scheduler raises them with one conditional UPDATE (``scheduler.claim``), so two
    placements can never both take the last room.
    """

    __tablename__ = "hypervisors"
    __table_args__ = (
        CheckConstraint("cpu_ratio > 0 AND memory_ratio > 0", name="ck_hypervisors_ratios"),
        CheckConstraint("vcpus_claimed >= 0 AND memory_claimed_mib >= 0", name="ck_hypervisors_claims"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    hostname: Mapped[str] = mapped_column(String(255))
    arch: Mapped[str] = mapped_column(String(16), default="x86_64")
    cpus: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    free_memory_mib: Mapped[int] = mapped_column(Integer, default=0)
    domains: Mapped[int] = mapped_column(Integer, default=0)
    running_domains: Mapped[int] = mapped_column(Integer, default=0)
    # up | down (its leaf rank is not OK) | gone (a ready tree has no such hypervisor) | removed
    # (a tombstone the operator made: never placed on again; reports for its id are ignored)
    state: Mapped[str] = mapped_column(String(16), default="up")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # Being emptied before removal: no new VMs. Apart from ``enabled`` so that re-enabling a
    # host after maintenance cannot silently cancel a drain (api/hypervisors.py).
    draining: Mapped[bool] = mapped_column(Boolean, default=False)
    cpu_ratio: Mapped[float] = mapped_column(Float, default=4.0)
    memory_ratio: Mapped[float] = mapped_column(Float, default=1.0)
    vcpus_claimed: Mapped[int] = mapped_column(Integer, default=0)
    memory_claimed_mib: Mapped[int] = mapped_column(Integer, default=0)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Image(Base):
    """A bootable disk image of an organisation: metadata here, bytes in the image directory."""

    __tablename__ = "images"
    # sqlite_autoincrement: never reuse a deleted image's id on SQLite (PostgreSQL never does),
    # so an upload still streaming into a deleted image cannot land in a new one with its id.
    __table_args__ = (UniqueConstraint("org_id", "name", name="uq_images_org_name"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organisations.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    arch: Mapped[str] = mapped_column(String(16), default="x86_64")
    disk_format: Mapped[str] = mapped_column(String(16), default="qcow2")
    status: Mapped[str] = mapped_column(String(16), default="queued")  # queued | saving | active | error
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SshKey(Base):
    """An SSH public key of an organisation, injected into instances that name it."""

    __tablename__ = "ssh_keys"
    __table_args__ = (UniqueConstraint("org_id", "name", name="uq_ssh_keys_org_name"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organisations.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    public_key: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Instance(Base):
    """A VM of an organisation: its desired shape, where it was placed, and its last known status.

    Size is copied from the flavor at create, so deleting a flavor never changes a VM.
    The domain on the hypervisor is named ``cl-<uuid>``, unique across tenants. A deleted
    instance keeps its row (status ``deleted``) so its jobs keep their subject; live
    names are unique per organisation through a partial index.
    """

    __tablename__ = "instances"
    __table_args__ = (
        Index("uq_instances_org_live_name", "org_id", "name", unique=True,
              sqlite_where=text("status != 'deleted'"), postgresql_where=text("status != 'deleted'")),
        Index("ix_instances_org_id_id", "org_id", "id"),
        Index("ix_instances_hypervisor_id", "hypervisor_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organisations.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    flavor_id: Mapped[int | None] = mapped_column(ForeignKey("flavors.id", ondelete="SET NULL"), nullable=True)
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="SET NULL"), nullable=True)
    ssh_key_id: Mapped[int | None] = mapped_column(ForeignKey("ssh_keys.id", ondelete="SET NULL"), nullable=True)
    # cloud-init user data, handed to the guest on its config drive (at most 64 KiB, as nova).
    user_data: Mapped[str | None] = mapped_column(Text, nullable=True)
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    disk_gib: Mapped[int] = mapped_column(Integer)
    arch: Mapped[str] = mapped_column(String(16), default="x86_64")
    hypervisor_id: Mapped[int | None] = mapped_column(ForeignKey("hypervisors.id"), nullable=True)
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


class JobState(str, enum.Enum):
    """Where a job is in its life; the last three are terminal."""

    pending = "pending"          # written, not yet planned or sent (or waiting for its subject)
    dispatched = "dispatched"    # sent to the root under its id (maybe again, after a restart)
    succeeded = "succeeded"
    failed = "failed"
    timeout = "timeout"


TERMINAL = (JobState.succeeded, JobState.failed, JobState.timeout)

# Subject types: what a job acts on (``Job.subject_type``).
INSTANCE = "instance"
IMAGE = "image"


class Job(Base):
    """One change to one resource (its *subject*), sent to one, some or all hypervisors.

    Written with the desired state in one transaction. ``kind`` names the handler that plans and
    settles it (api/jobs/); ``subject_type``/``subject_id`` the resource it acts on, any kind of
    resource, so the engine runs one job at a time per subject. ``targets`` is where it was sent:
    ``{"hypervisor": n}``, ``{"hypervisors": [...]}`` or ``{"all": true}`` (None until planned).
    ``id`` is the job id the tree carries; agents execute idempotently under it, so sending it
    again after a restart is safe (docs/architecture.md "Lifecycle of a job").
    """

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_org_id_created", "org_id", "created_at"),
        Index("ix_jobs_state", "state"),
        Index("ix_jobs_batch", "batch"),
        Index("ix_jobs_subject", "subject_type", "subject_id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organisations.id", ondelete="CASCADE"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    batch: Mapped[str] = mapped_column(String(32))  # the request that made it; `job watch --batch`
    kind: Mapped[str] = mapped_column(String(32), default="vm")  # the handler: vm | image | ...
    action: Mapped[str] = mapped_column(String(32))  # the kind's verb: create | start | ... | evict
    subject_type: Mapped[str] = mapped_column(String(32))
    subject_id: Mapped[int] = mapped_column(Integer)
    hypervisor_id: Mapped[int | None] = mapped_column(Integer, nullable=True)  # a unicast job's target
    targets: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    args: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # action arguments (new size, image)
    state: Mapped[JobState] = mapped_column(Enum(JobState, name="job_state", native_enum=False, length=16),
                                            default=JobState.pending)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    @property
    def subject(self) -> tuple[str, int]:
        """The resource the job acts on; the engine serialises jobs per subject."""
        return (self.subject_type, self.subject_id)

    @property
    def instance_id(self) -> int | None:
        """The instance a VM job acts on (None for jobs on other resources)."""
        return self.subject_id if self.subject_type == INSTANCE else None
