"""External network, router and floating IP bodies (issue 12)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from cloudland_api.schemas.common import MAX_ID, Name, Page, Ref, _Request
from cloudland_api.schemas.networks import MAX_POOLS, Address, Cidr, Pool, PoolPublic

Bridge = Annotated[str, Field(min_length=1, max_length=15, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                              description="The provider bridge every hypervisor has on the segment")]


class ExternalNetworkCreate(_Request):
    """A provider segment (operator only). ``gateway`` defaults to the first host address (the
    next hop; never handed out), ``allocation_pools`` to every other host address."""

    name: Name
    cidr: Cidr
    bridge: Bridge
    gateway: Address | None = None
    allocation_pools: Annotated[list[Pool], Field(max_length=MAX_POOLS)] | None = None


class ExternalNetworkPublic(BaseModel):
    """An external network, shared by every organisation."""

    id: int
    name: str
    cidr: str
    gateway: str | None
    bridge: str
    allocation_pools: list[PoolPublic]
    created_at: datetime


class ExternalNetworkList(Page):
    items: list[ExternalNetworkPublic]


class RouterCreate(_Request):
    """A router of ``vpc`` (one per VPC)."""

    name: Name
    vpc: Ref


class RouterSubnetRef(_Request):
    """A subnet of the router's VPC to connect or disconnect."""

    subnet: Ref


class RouterGateway(_Request):
    """The router's gateway: an external network, or null for none."""

    external_network: Ref | None


class SnatAddress(BaseModel):
    hypervisor_id: int
    address: str


class RouterPublic(BaseModel):
    """A router: its VPC, the subnets it connects, its external network and SNAT addresses (one per hypervisor)."""

    id: int
    name: str
    vpc_id: int
    subnet_ids: list[int]
    external_network_id: int | None
    snat_addresses: list[SnatAddress]
    created_at: datetime


class RouterList(Page):
    items: list[RouterPublic]


class FloatingIpCreate(_Request):
    """A floating IP from ``external_network``."""

    external_network: Ref


class FloatingIpAssociate(_Request):
    """Associate to ``port`` (one of the project's), at ``fixed_ip`` (default: its first address)."""

    port: Annotated[int, Field(ge=1, le=MAX_ID)]
    fixed_ip: Address | None = None


class FloatingIpPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    address: str
    external_network_id: int
    port_id: int | None
    fixed_ip: str | None
    created_at: datetime


class FloatingIpList(Page):
    items: list[FloatingIpPublic]
