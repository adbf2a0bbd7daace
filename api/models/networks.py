"""Tenant networks: VPCs, their subnets (one L2 segment and VNI each) and ports (issue 11).

A VPC is an organisation's routing domain; its ``generation`` is +1 on every change the control
plane makes to what its hypervisors must hold (proto/v1/network.proto "Versions"). A subnet's
VNI is unique in the cluster; its CIDR may overlap another VPC's (tenants' ranges overlap
freely). A port is a guest NIC's place on a subnet: a MAC, fixed addresses (``PortIp``,
unique per subnet: the database refuses a duplicate even if a caller bypasses the allocator),
optionally an instance and the hypervisor it is bound to.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, Boolean, CheckConstraint, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from cloudland_api.models.base import Base, UTCDateTime, depends_on, utcnow
from cloudland_api.models.projects import ProjectOwned

if TYPE_CHECKING:
    from cloudland_api.models.compute import Instance
    from cloudland_api.models.hypervisors import Hypervisor
    from cloudland_api.models.identity import Organisation


class Vpc(ProjectOwned, Base):
    """A tenant's routing domain: name unique in its project, a DNS domain, a generation."""

    __tablename__ = "vpcs"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_vpcs_project_name"),
                      CheckConstraint("generation >= 0 AND mtu >= 576", name="ck_vpcs_generation_mtu"))

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organisations.id", ondelete="CASCADE"), index=True)
    org: Mapped[Organisation] = depends_on("Organisation")
    name: Mapped[str] = mapped_column(String(64))
    domain: Mapped[str] = mapped_column(String(253))  # instance names resolve under it, inside the VPC
    mtu: Mapped[int] = mapped_column(Integer)          # the guests' MTU: the underlay's minus VXLAN's 50
    generation: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Subnet(ProjectOwned, Base):
    """One L2 segment of a VPC: an IPv4 CIDR, its gateway, pools, DNS servers, DHCP, and a VNI."""

    __tablename__ = "subnets"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_subnets_project_name"),
                      UniqueConstraint("vni", name="uq_subnets_vni"),
                      CheckConstraint("vni >= 1 AND vni <= 16777215", name="ck_subnets_vni"),
                      Index("ix_subnets_vpc_id", "vpc_id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organisations.id", ondelete="CASCADE"), index=True)
    org: Mapped[Organisation] = depends_on("Organisation")
    vpc_id: Mapped[int] = mapped_column(ForeignKey("vpcs.id", ondelete="RESTRICT"))
    vpc: Mapped[Vpc] = depends_on("Vpc")
    name: Mapped[str] = mapped_column(String(64))
    cidr: Mapped[str] = mapped_column(String(18))            # a network: 10.0.0.0/24
    gateway: Mapped[str | None] = mapped_column(String(15), nullable=True)
    # [[first, last], ...] inclusive address ranges the allocator takes from, in order.
    allocation_pools: Mapped[list[Any]] = mapped_column(JSON, default=list)
    dns_servers: Mapped[list[Any]] = mapped_column(JSON, default=list)
    dhcp: Mapped[bool] = mapped_column(Boolean, default=True)
    vni: Mapped[int] = mapped_column(Integer)                # from CLOUDLAND_API_VNI_RANGE
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Port(ProjectOwned, Base):
    """A guest NIC's place on a subnet: its MAC, its instance (and NIC order) and where it is bound."""

    __tablename__ = "ports"
    __table_args__ = (UniqueConstraint("mac", name="uq_ports_mac"),
                      Index("ix_ports_org_id_id", "org_id", "id"),
                      Index("ix_ports_subnet_id", "subnet_id"),
                      Index("ix_ports_vpc_hypervisor", "vpc_id", "hypervisor_id"),
                      Index("ix_ports_instance_id", "instance_id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organisations.id", ondelete="CASCADE"))
    org: Mapped[Organisation] = depends_on("Organisation")
    subnet_id: Mapped[int] = mapped_column(ForeignKey("subnets.id", ondelete="RESTRICT"))
    subnet: Mapped[Subnet] = depends_on("Subnet")
    vpc_id: Mapped[int] = mapped_column(ForeignKey("vpcs.id", ondelete="RESTRICT"))  # the subnet's: who to tell
    vpc: Mapped[Vpc] = depends_on("Vpc")
    name: Mapped[str] = mapped_column(String(64), default="")
    mac: Mapped[str] = mapped_column(String(17))                 # lower-case aa:bb:cc:dd:ee:ff
    instance_id: Mapped[int | None] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"), nullable=True)
    instance: Mapped[Instance | None] = depends_on("Instance")
    device_index: Mapped[int | None] = mapped_column(Integer, nullable=True)  # NIC order on the instance; 0 primary
    # Where the port lives: set when its instance is placed; None for a port on no hypervisor yet.
    hypervisor_id: Mapped[int | None] = mapped_column(ForeignKey("hypervisors.id"), nullable=True)
    hypervisor: Mapped[Hypervisor | None] = depends_on("Hypervisor")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PortIp(Base):
    """One fixed address of a port; (subnet, address) is unique: no address is ever handed out twice."""

    __tablename__ = "port_ips"
    __table_args__ = (UniqueConstraint("subnet_id", "address", name="uq_port_ips_subnet_address"),
                      Index("ix_port_ips_port_id", "port_id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    port_id: Mapped[int] = mapped_column(ForeignKey("ports.id", ondelete="CASCADE"))
    port: Mapped[Port] = depends_on("Port")
    subnet_id: Mapped[int] = mapped_column(ForeignKey("subnets.id", ondelete="RESTRICT"))
    subnet: Mapped[Subnet] = depends_on("Subnet")
    address: Mapped[str] = mapped_column(String(15))
