"""Security groups (issue 12): a project's groups of firewall rules, and which ports are in them.

Groups and rules are ``ProjectOwned`` (migration 0013), and a group's name is unique in its
project. A port with no row in ``port_security_groups`` is in its project's group ``default``
(made with the project, ``make_default_group``: egress open, ingress only from the group's own
members). A rule names its remote end by a CIDR or by a group of the same project (a named set
of the group's members' addresses on each hypervisor), or neither (anywhere).
"""

from __future__ import annotations

from datetime import datetime
from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Index, Integer, String, UniqueConstraint, event, insert
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapped, Mapper, mapped_column

from cloudland_api.models.base import Base, UTCDateTime, depends_on, utcnow
from cloudland_api.models.identity import Organisation
from cloudland_api.models.projects import Project, ProjectOwned, default_project_id

DEFAULT_GROUP = "default"
DEFAULT_DESCRIPTION = "egress open, ingress from its members"


class SecurityGroup(ProjectOwned, Base):
    """A named group of rules of one project; ``default`` is the one of its ports given none."""

    __tablename__ = "security_groups"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_security_groups_project_name"),
                      Index("ix_security_groups_org_id_id", "org_id", "id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organisations.id", ondelete="CASCADE"))
    org: Mapped[Organisation] = depends_on("Organisation")
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(String(255), default="")
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SecurityRule(ProjectOwned, Base):
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
    """A port's membership of a group of its project (a port with none is in its project's default group)."""

    __tablename__ = "port_security_groups"
    __table_args__ = (Index("ix_port_security_groups_group_id", "group_id"),)

    port_id: Mapped[int] = mapped_column(ForeignKey("ports.id", ondelete="CASCADE"), primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("security_groups.id", ondelete="RESTRICT"), primary_key=True)


class PortAllowedAddress(Base):
    """An allowed address pair of a port: a source address or network its guest may send from."""

    __tablename__ = "port_allowed_addresses"

    port_id: Mapped[int] = mapped_column(ForeignKey("ports.id", ondelete="CASCADE"), primary_key=True)
    cidr: Mapped[str] = mapped_column(String(18), primary_key=True)


def make_default_group(connection: Connection, org_id: int, project_id: int) -> None:
    """Project ``project_id``'s default group and its two rules (egress open, ingress from its
    own members): made with the project, in its transaction (Core inserts: no ORM flush)."""
    group_id = connection.execute(insert(SecurityGroup).values(
        org_id=org_id, project_id=project_id, name=DEFAULT_GROUP, description=DEFAULT_DESCRIPTION, is_default=True,
        created_at=utcnow())).inserted_primary_key[0]  # type: ignore[index]
    connection.execute(insert(SecurityRule), [
        {"org_id": org_id, "project_id": project_id, "group_id": group_id, "direction": "egress", "protocol": "any",
         "remote_group_id": None, "created_at": utcnow()},  # (every row names the same columns)
        {"org_id": org_id, "project_id": project_id, "group_id": group_id, "direction": "ingress", "protocol": "any",
         "remote_group_id": group_id, "created_at": utcnow()}])


@event.listens_for(Project, "after_insert")
def _project_made(_mapper: Mapper[object], connection: Connection, project: Project) -> None:
    make_default_group(connection, project.org_id, project.id)


@event.listens_for(Organisation, "after_insert")
def _organisation_made(_mapper: Mapper[object], connection: Connection, org: Organisation) -> None:
    # After models/projects.py's listener (registered first, on import) made its default project.
    project_id = default_project_id(connection, org.id)
    if project_id is not None:
        make_default_group(connection, org.id, project_id)
