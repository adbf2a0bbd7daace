"""Flavor bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from cloudland_api.schemas.common import Name, Page, _Request


class FlavorCreate(_Request):
    """A new flavor; the name must be unused in the caller's organisation."""

    name: Name
    vcpus: Annotated[int, Field(ge=1, le=256)]  # DomainSpec's MAX_VCPUS
    # 64 MiB is the least libvirt domain we define (agents/compute/domain.py MIN_MEMORY_MIB).
    memory_mib: Annotated[int, Field(ge=64, le=4 * 1024 * 1024)]  # up to 4 TiB, DomainSpec's limit
    disk_gib: Annotated[int, Field(ge=0, le=1024 * 1024)]         # up to 1 PiB


class FlavorPublic(BaseModel):
    """A flavor as the API shows it."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    vcpus: int
    memory_mib: int
    disk_gib: int
    created_at: datetime


class FlavorList(Page):
    """One page of flavors, by id."""

    items: list[FlavorPublic]
