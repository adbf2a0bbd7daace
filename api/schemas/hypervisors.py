"""Hypervisor bodies (operator only)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from cloudland_api.schemas.common import Page, _Request


class HypervisorPublic(BaseModel):
    """A hypervisor as the tree reports it, with its settings and what instances claim on it."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    hostname: str
    arch: str
    state: str  # up | down | gone | removed (api/services/hypervisors.py)
    enabled: bool
    draining: bool
    cpus: int
    memory_mib: int
    free_memory_mib: int
    domains: int
    running_domains: int
    cpu_ratio: float
    memory_ratio: float
    vcpus_claimed: int
    memory_claimed_mib: int
    vcpus_capacity: int
    memory_capacity_mib: int
    last_seen: datetime
    vtep: str  # underlay IPv4 address where its ports' VXLAN tunnels end; "" while unknown


class HypervisorList(Page):
    """One page of hypervisors, by id."""

    items: list[HypervisorPublic]


class RemainingInstance(BaseModel):
    """A VM still on a hypervisor being drained: what the operator has to move or delete."""

    id: int
    name: str
    org_id: int
    organisation: str
    status: str


class HypervisorDrain(BaseModel):
    """A drained hypervisor and the VMs (not deleted) that remain on it, by id."""

    hypervisor: HypervisorPublic
    remaining: list[RemainingInstance]


class HypervisorUpdate(_Request):
    """Operator settings of one hypervisor; omitted fields stay as they are."""

    enabled: bool | None = None
    cpu_ratio: Annotated[float, Field(gt=0, le=64)] | None = None
    memory_ratio: Annotated[float, Field(gt=0, le=16)] | None = None
