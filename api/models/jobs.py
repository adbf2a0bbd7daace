"""Jobs: one change to one resource, sent to one, some or all hypervisors."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, Enum, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from cloudland_api.models.base import Base, UTCDateTime, depends_on, utcnow

if TYPE_CHECKING:
    from cloudland_api.models.identity import Organisation, User


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
VPC = "vpc"
VOLUME = "volume"
HYPERVISOR = "hypervisor"


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
    # The project of the subject (None: the control plane's own, seen in every project of the org).
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), nullable=True,
                                                   index=True)
    org: Mapped[Organisation] = depends_on("Organisation")
    user: Mapped[User | None] = depends_on("User")
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
