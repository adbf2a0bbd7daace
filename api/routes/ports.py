"""``/api/v1/ports``: NICs' places on the organisation's subnets, with their addresses (issue 11)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Path, Query, status
from sqlalchemy.orm import Session

from cloudland_api.deps import CurrentUser, PageAfter, PageLimit, SessionDep, SubmitDep
from cloudland_api.jobs.kinds import follow_ups
from cloudland_api.models import Port
from cloudland_api.policy import allow
from cloudland_api.schemas import MAX_ID, ErrorResponse, PortCreate, PortList, PortPublic, PortUpdate
from cloudland_api.services import netstate, networks, secgroups

router = APIRouter(prefix="/ports", tags=["networks"],
                   responses={401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}})
PortId = Annotated[int, Path(ge=1, le=MAX_ID, description="Port id")]
Filter = Annotated[int | None, Query(ge=1, le=MAX_ID)]
_CHANGES = {403: {"model": ErrorResponse}, 409: {"model": ErrorResponse}}


def _public(session: Session, ports: Sequence[Port]) -> list[PortPublic]:
    ips = networks.fixed_ips(session, ports)
    wire = {p.id: p for p in netstate.net_ports(session, ports)}  # groups and pairs as hypervisors get them
    return [PortPublic(id=p.id, name=p.name, subnet_id=p.subnet_id, vpc_id=p.vpc_id, mac=p.mac,
                       fixed_ips=ips.get(p.id, []), instance_id=p.instance_id, device_index=p.device_index,
                       hypervisor_id=p.hypervisor_id, security_groups=list(wire[p.id].security_groups),
                       allowed_addresses=list(wire[p.id].allowed_addresses), created_at=p.created_at) for p in ports]


@router.get("", **allow("port", "read"))
def list_ports(session: SessionDep, caller: CurrentUser, limit: PageLimit = 50, after: PageAfter = None,
               subnet: Filter = None, vpc: Filter = None, instance: Filter = None) -> PortList:
    """One page of the organisation's ports, by id; pass ``next_after`` back as ``after``."""
    rows, next_after = networks.list_ports(session, caller, limit, after, subnet=subnet, vpc=vpc, instance=instance)
    return PortList(items=_public(session, rows), limit=limit, next_after=next_after)


@router.post("", status_code=status.HTTP_201_CREATED, **allow("port", "create", responses={400: {"model": ErrorResponse}, **_CHANGES}))
def create_port(body: PortCreate, session: SessionDep, caller: CurrentUser) -> PortPublic:
    """Create a port on a subnet (admin or member), bound to no instance; 409 when the subnet is full."""
    return _public(session, [networks.create_port(session, caller, body)])[0]


@router.get("/{port_id}", **allow("port", "read"))
def get_port(port_id: PortId, session: SessionDep, caller: CurrentUser) -> PortPublic:
    """One port of the organisation."""
    return _public(session, [networks.get_port(session, caller, port_id)])[0]


@router.patch("/{port_id}", **allow("port", "update", responses={400: {"model": ErrorResponse}, **_CHANGES}))
def update_port(port_id: PortId, body: PortUpdate, session: SessionDep, caller: CurrentUser,
                submit: SubmitDep) -> PortPublic:
    """Set a port's security groups (an empty list: the default group) and allowed address pairs;
    a bound port's hypervisors get the change (issue 12)."""
    port = secgroups.set_port(session, caller, port_id, body)
    submit(follow_ups(session))
    return _public(session, [port])[0]


@router.delete("/{port_id}", status_code=status.HTTP_204_NO_CONTENT, **allow("port", "delete", responses=_CHANGES))
def delete_port(port_id: PortId, session: SessionDep, caller: CurrentUser) -> None:
    """Delete a port made by hand (admin); an instance's ports go with the instance (409)."""
    networks.delete_port(session, caller, port_id)
