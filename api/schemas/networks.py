"""VPC, subnet and port bodies (issue 11).

Addresses are checked for their form here (an IPv4 CIDR, dotted quads); whether a CIDR is a
network, a gateway lies inside it, or an address is free is the service's to say
(services/networks.py), with messages naming both values.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from cloudland_api.schemas.common import Name, Page, Ref, _Request

IPV4 = r"^[0-9]{1,3}(\.[0-9]{1,3}){3}$"
Address = Annotated[str, Field(min_length=7, max_length=15, pattern=IPV4, description="An IPv4 address")]
Cidr = Annotated[str, Field(min_length=9, max_length=18, pattern=r"^[0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}$",
                            description="An IPv4 network, e.g. 10.0.0.0/24")]
Domain = Annotated[str, Field(min_length=1, max_length=253,
                              pattern=r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
Mac = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$", description="aa:bb:cc:dd:ee:ff")]
MAX_POOLS = 16
MAX_DNS = 4
MAX_FIXED_IPS = 8
MAX_NETWORKS = 8  # NICs per instance


class VpcCreate(_Request):
    """A new VPC; ``domain`` defaults to ``vpc-<id>.cloudland.internal``."""

    name: Name
    domain: Domain | None = None


class VpcPublic(BaseModel):
    """A VPC: its DNS domain, the guests' MTU and the generation of its hypervisors' state."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    domain: str
    mtu: int
    generation: int
    created_at: datetime


class VpcList(Page):
    """One page of VPCs, by id."""

    items: list[VpcPublic]


class Pool(_Request):
    """An inclusive range of addresses the allocator hands out."""

    start: Address
    end: Address


class SubnetCreate(_Request):
    """A new subnet of ``vpc``. ``gateway`` defaults to the first host address; null means none.
    ``allocation_pools`` default to every host address (the gateway and, with DHCP, the DHCP
    server's address, the last usable one, are never handed out)."""

    name: Name
    vpc: Ref
    cidr: Cidr
    gateway: Address | None = None
    allocation_pools: Annotated[list[Pool], Field(max_length=MAX_POOLS)] | None = None
    dns_servers: Annotated[list[Address], Field(max_length=MAX_DNS)] = []
    dhcp: bool = True


class PoolPublic(BaseModel):
    """An inclusive range of addresses the allocator hands out."""

    start: str
    end: str


class SubnetPublic(BaseModel):
    """A subnet: its addresses, DHCP and DNS, and the VNI its segment carries."""

    id: int
    name: str
    vpc_id: int
    cidr: str
    gateway: str | None
    allocation_pools: list[PoolPublic]
    dns_servers: list[str]
    dhcp: bool
    dhcp_server: str | None  # where its DHCP and DNS server answers (the last usable address), never a port's
    vni: int
    created_at: datetime


class SubnetList(Page):
    """One page of subnets, by id."""

    items: list[SubnetPublic]


class PortCreate(_Request):
    """A port on ``subnet``, not bound to an instance; without ``fixed_ips`` it gets one free address."""

    subnet: Ref
    name: Annotated[str, Field(max_length=64, pattern=r"^[A-Za-z0-9._-]*$")] = ""
    fixed_ips: Annotated[list[Address], Field(min_length=1, max_length=MAX_FIXED_IPS)] | None = None
    mac: Mac | None = None


class PortPublic(BaseModel):
    """A port: its MAC and addresses, its instance (NIC ``device_index``, 0 the primary) and hypervisor."""

    id: int
    name: str
    subnet_id: int
    vpc_id: int
    mac: str
    fixed_ips: list[str]
    instance_id: int | None
    device_index: int | None
    hypervisor_id: int | None
    security_groups: list[int] = []  # its groups; none given: its project's default group
    allowed_addresses: list[str] = []
    created_at: datetime


class PortList(Page):
    """One page of ports, by id."""

    items: list[PortPublic]
