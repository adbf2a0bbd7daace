"""The hosts of the tree as the control plane knows them (not tenant-owned)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, CheckConstraint, Float, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from cloudland_api.models.base import Base, UTCDateTime, utcnow


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
    # host after maintenance cannot silently cancel a drain (api/services/hypervisors.py).
    draining: Mapped[bool] = mapped_column(Boolean, default=False)
    cpu_ratio: Mapped[float] = mapped_column(Float, default=4.0)
    memory_ratio: Mapped[float] = mapped_column(Float, default=1.0)
    vcpus_claimed: Mapped[int] = mapped_column(Integer, default=0)
    memory_claimed_mib: Mapped[int] = mapped_column(Integer, default=0)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The host's underlay IPv4 address, where VXLAN tunnels to its ports end (HypervisorReport.vtep);
    # "" while unknown.
    vtep: Mapped[str] = mapped_column(String(15), default="")
    # The reporting agent process's start id (HypervisorReport.incarnation), and the one that was
    # last sent its whole network state (reconcile/net.py): when they differ, the agent (re)started.
    incarnation: Mapped[str] = mapped_column(String(64), default="")
    net_incarnation: Mapped[str] = mapped_column(String(64), default="")
