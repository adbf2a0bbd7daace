"""External networks, routers and the addresses they hand out (issue 12).

An **external network** is the operator's: a provider segment every hypervisor reaches through a
bridge of the same name (``bridge``), a public CIDR, its next hop and allocation pools; every
organisation may use it. A **router** is a VPC's (one at most, in the VPC's project): the subnets it connects
(``RouterSubnet``, a subnet in one router) and, optionally, its gateway on an external network.
An **external IP** is one address taken from an external network, unique there: either a
project's *floating IP* (``kind`` floating; associated to one port's fixed address, or to
nothing), or a router's *SNAT address* on one hypervisor (``kind`` snat: one per router and
hypervisor, docs/architecture.md "Routers, SNAT and floating IPs"), in its router's project.
Routers and external IPs are ``ProjectOwned`` (migration 0013); external networks are the
operator's and belong to no project.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, CheckConstraint, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from cloudland_api.models.base import Base, UTCDateTime, depends_on, utcnow
from cloudland_api.models.projects import ProjectOwned

if TYPE_CHECKING:
    from cloudland_api.models.identity import Organisation

FLOATING, SNAT = "floating", "snat"


class ExternalNetwork(Base):
    """A provider segment with a public CIDR: made by the operator, shared by every organisation."""

    __tablename__ = "external_networks"
    __table_args__ = (UniqueConstraint("name", name="uq_external_networks_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organisations.id", ondelete="CASCADE"))  # the operator's
    org: Mapped[Organisation] = depends_on("Organisation")
    name: Mapped[str] = mapped_column(String(64))
    cidr: Mapped[str] = mapped_column(String(18))
    gateway: Mapped[str | None] = mapped_column(String(15), nullable=True)  # the next hop on the segment
    bridge: Mapped[str] = mapped_column(String(15))  # the provider bridge on every hypervisor
    allocation_pools: Mapped[list[Any]] = mapped_column(JSON, default=list)  # [[first, last], ...]
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Router(ProjectOwned, Base):
    """A VPC's router: the subnets it connects, and its gateway on an external network (or none)."""

    __tablename__ = "routers"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_routers_project_name"),
                      UniqueConstraint("vpc_id", name="uq_routers_vpc"))

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organisations.id", ondelete="CASCADE"), index=True)
    org: Mapped[Organisation] = depends_on("Organisation")
    name: Mapped[str] = mapped_column(String(64))
    vpc_id: Mapped[int] = mapped_column(ForeignKey("vpcs.id", ondelete="RESTRICT"))
    external_network_id: Mapped[int | None] = mapped_column(ForeignKey("external_networks.id", ondelete="RESTRICT"),
                                                            nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RouterSubnet(Base):
    """A subnet a router connects (its gateway address is the router's there); a subnet is in one router."""

    __tablename__ = "router_subnets"
    __table_args__ = (UniqueConstraint("subnet_id", name="uq_router_subnets_subnet"),
                      Index("ix_router_subnets_router_id", "router_id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    router_id: Mapped[int] = mapped_column(ForeignKey("routers.id", ondelete="CASCADE"))
    subnet_id: Mapped[int] = mapped_column(ForeignKey("subnets.id", ondelete="RESTRICT"))


class ExternalIp(ProjectOwned, Base):
    """An address of an external network: a floating IP, or a router's SNAT address on one hypervisor."""

    __tablename__ = "external_ips"
    __table_args__ = (UniqueConstraint("external_network_id", "address", name="uq_external_ips_address"),
                      UniqueConstraint("router_id", "hypervisor_id", name="uq_external_ips_router_hypervisor"),
                      CheckConstraint("kind IN ('floating', 'snat')", name="ck_external_ips_kind"),
                      Index("ix_external_ips_org_id_id", "org_id", "id"),
                      Index("ix_external_ips_port_id", "port_id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organisations.id", ondelete="CASCADE"))
    org: Mapped[Organisation] = depends_on("Organisation")
    external_network_id: Mapped[int] = mapped_column(ForeignKey("external_networks.id", ondelete="RESTRICT"))
    address: Mapped[str] = mapped_column(String(15))
    kind: Mapped[str] = mapped_column(String(8))
    # A SNAT address: its router and hypervisor.
    router_id: Mapped[int | None] = mapped_column(ForeignKey("routers.id", ondelete="CASCADE"), nullable=True)
    hypervisor_id: Mapped[int | None] = mapped_column(ForeignKey("hypervisors.id", ondelete="CASCADE"), nullable=True)
    # A floating IP: the port and fixed address it is associated to (deleting the port disassociates it).
    port_id: Mapped[int | None] = mapped_column(ForeignKey("ports.id", ondelete="SET NULL"), nullable=True)
    fixed_ip: Mapped[str | None] = mapped_column(String(15), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
