"""Security group bodies (issue 12). Forms are checked here; meanings (a protocol we know, a port
range in order, a remote group of the project) by the service, whose 400s name the value."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from cloudland_api.schemas.common import NO_NUL, Name, Page, Ref, _Request

CidrText = Annotated[str, Field(min_length=9, max_length=18, pattern=r"^[0-9]{1,3}(\.[0-9]{1,3}){3}(/[0-9]{1,2})?$",
                                description="An IPv4 address or network, e.g. 0.0.0.0/0")]
MAX_GROUPS = 16       # groups per port
MAX_PAIRS = 16        # allowed address pairs per port


class SecurityGroupCreate(_Request):
    """A new security group of the request's project, with no rule (everything in is denied, out too)."""

    name: Name
    description: Annotated[str, Field(max_length=255, pattern=NO_NUL)] = ""


class RuleCreate(_Request):
    """A rule. ``protocol``: tcp, udp, icmp or any; ``port_min``..``port_max`` (tcp and udp only;
    neither: every port); the remote end: ``remote_cidr`` or ``remote_group`` (a group of the
    project, by id or name), or neither (anywhere)."""

    direction: Literal["ingress", "egress"] = "ingress"
    protocol: Annotated[str, Field(max_length=16)] = "any"
    port_min: int | None = None
    port_max: int | None = None
    remote_cidr: CidrText | None = None
    remote_group: Ref | None = None


class RulePublic(BaseModel):
    """One rule of a group."""

    id: int
    direction: str
    protocol: str
    port_min: int | None
    port_max: int | None
    remote_cidr: str | None
    remote_group_id: int | None


class SecurityGroupPublic(BaseModel):
    """A security group and its rules."""

    id: int
    name: str
    description: str
    is_default: bool
    rules: list[RulePublic]
    created_at: datetime


class SecurityGroupList(Page):
    """One page of security groups, by id."""

    items: list[SecurityGroupPublic]


class PortUpdate(_Request):
    """A port's security groups (by id or name; an empty list: its project's default group)
    and allowed address pairs (source addresses or networks its guest may send from, besides its own)."""

    security_groups: Annotated[list[Ref], Field(max_length=MAX_GROUPS)] | None = None
    allowed_addresses: Annotated[list[CidrText], Field(max_length=MAX_PAIRS)] | None = None
