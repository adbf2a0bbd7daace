"""Security groups (issue 12): an organisation's groups of firewall rules, and which ports are in them.

A port with no row in ``port_security_groups`` is in its organisation's group ``default`` (made
with the organisation's first port: egress open, ingress only from the group's own members).
A rule names its remote end by a CIDR or by a group of the same organisation (a named set of
the group's members' addresses on each hypervisor), or neither (anywhere).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from cloudland_api.models.base import Base, UTCDateTime, depends_on, utcnow

if TYPE_CHECKING:
    from cloudland_api.models.identity import Organisation

DEFAULT_GROUP = "default"


class SecurityGroup(Base):
    """A named group of rules of one organisation; ``default`` is the one of ports given none."""

    __tablename__ = "security_groups"
    __table_args__ = (UniqueConstraint("org_id", "name", name="uq_security_groups_org_name"),
                      Index("ix_security_groups_org_id_id", "org_id", "id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organisations.id", ondelete="CASCADE"))
    org: Mapped[Organisation] = depends_on("Organisation")
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(String(255), default="")
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SecurityRule(Base):
    """One rule: direction, protocol, destination ports, and a remote CIDR or group (or anywhere)."""

    __tablename__ = "security_rules"
    __table_args__ = (CheckConstraint("direction IN ('ingress', 'egress')", name="ck_security_rules_direction"),
                      CheckConstraint("protocol IN ('tcp', 'udp', 'icmp', 'any')", name="ck_security_rules_protocol"),
                      Index("ix_security_rules_group_id", "group_id"),
                      Index("ix_security_rules_remote_group_id", "remote_group_id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organisations.id", ondelete="CASCADE"))
    group_id: Mapped[int] = mapped_column(ForeignKey("security_groups.id", ondelete="CASCADE"))
    direction: Mapped[str] = mapped_column(String(8))
    protocol: Mapped[str] = mapped_column(String(8))
    port_min: Mapped[int | None] = mapped_column(Integer, nullable=True)
    port_max: Mapped[int | None] = mapped_column(Integer, nullable=True)
    remote_cidr: Mapped[str | None] = mapped_column(String(18), nullable=True)
    remote_group_id: Mapped[int | None] = mapped_column(ForeignKey("security_groups.id", ondelete="RESTRICT"),
                                                        nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PortSecurityGroup(Base):
    """A port's membership of a group (a port with none is in its organisation's default group)."""

    __tablename__ = "port_security_groups"
    __table_args__ = (Index("ix_port_security_groups_group_id", "group_id"),)

    port_id: Mapped[int] = mapped_column(ForeignKey("ports.id", ondelete="CASCADE"), primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("security_groups.id", ondelete="RESTRICT"), primary_key=True)


class PortAllowedAddress(Base):
    """An allowed address pair of a port: a source address or network its guest may send from."""

    __tablename__ = "port_allowed_addresses"

    port_id: Mapped[int] = mapped_column(ForeignKey("ports.id", ondelete="CASCADE"), primary_key=True)
    cidr: Mapped[str] = mapped_column(String(18), primary_key=True)
