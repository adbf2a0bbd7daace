"""``/api/v1/subnets``: the L2 segments of the organisation's VPCs, each with a VNI (issue 11)."""

from __future__ import annotations

from ipaddress import IPv4Network
from typing import Annotated

from fastapi import APIRouter, Path, Query, status

from cloudland_api.deps import CurrentUser, PageAfter, PageLimit, SessionDep, SettingsDep
from cloudland_api.models import Subnet
from cloudland_api.policy import allow
from cloudland_api.schemas import MAX_ID, ErrorResponse, SubnetCreate, SubnetList, SubnetPublic
from cloudland_api.schemas.networks import PoolPublic
from cloudland_api.services import ipam, networks

router = APIRouter(prefix="/subnets", tags=["networks"],
                   responses={401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}})
SubnetId = Annotated[int, Path(ge=1, le=MAX_ID, description="Subnet id")]
_CHANGES = {403: {"model": ErrorResponse}, 409: {"model": ErrorResponse}}


def _public(subnet: Subnet) -> SubnetPublic:
    return SubnetPublic(id=subnet.id, name=subnet.name, vpc_id=subnet.vpc_id, cidr=subnet.cidr, gateway=subnet.gateway,
                        allocation_pools=[PoolPublic(start=start, end=end) for start, end in subnet.allocation_pools],
                        dns_servers=subnet.dns_servers, dhcp=subnet.dhcp, vni=subnet.vni, created_at=subnet.created_at,
                        dhcp_server=str(ipam.dhcp_server(IPv4Network(subnet.cidr))) if subnet.dhcp else None)


@router.get("", **allow("subnet", "read"))
def list_subnets(session: SessionDep, caller: CurrentUser, limit: PageLimit = 50, after: PageAfter = None,
                 vpc: Annotated[int | None, Query(ge=1, le=MAX_ID, description="Only this VPC's")] = None
                 ) -> SubnetList:
    """One page of the organisation's subnets, by id; pass ``next_after`` back as ``after``."""
    rows, next_after = networks.list_subnets(session, caller, limit, after, vpc)
    return SubnetList(items=[_public(s) for s in rows], limit=limit, next_after=next_after)


@router.post("", status_code=status.HTTP_201_CREATED, **allow("subnet", "create", responses={400: {"model": ErrorResponse}, **_CHANGES}))
def create_subnet(body: SubnetCreate, session: SessionDep, caller: CurrentUser, settings: SettingsDep) -> SubnetPublic:
    """Create a subnet of a VPC (admin or member); its VNI comes from the operator's range."""
    return _public(networks.create_subnet(session, caller, body, settings))


@router.get("/{subnet_id}", **allow("subnet", "read"))
def get_subnet(subnet_id: SubnetId, session: SessionDep, caller: CurrentUser) -> SubnetPublic:
    """One subnet of the organisation."""
    return _public(networks.get_subnet(session, caller, subnet_id))


@router.delete("/{subnet_id}", status_code=status.HTTP_204_NO_CONTENT, **allow("subnet", "delete", responses=_CHANGES))
def delete_subnet(subnet_id: SubnetId, session: SessionDep, caller: CurrentUser) -> None:
    """Delete a subnet (admin); 409 while it has ports."""
    networks.delete_subnet(session, caller, subnet_id)
