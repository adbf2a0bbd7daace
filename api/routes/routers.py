"""``/api/v1/routers``: the project's VPC routers, their subnets and gateways (issue 12)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Path, status
from sqlalchemy.orm import Session

from cloudland_api.deps import CurrentUser, PageAfter, PageLimit, SessionDep, SubmitDep
from cloudland_api.jobs import follow_ups
from cloudland_api.models import Router
from cloudland_api.policy import allow
from cloudland_api.schemas import MAX_ID, ErrorResponse
from cloudland_api.schemas.routers import (
    RouterCreate,
    RouterGateway,
    RouterList,
    RouterPublic,
    RouterSubnetRef,
    SnatAddress,
)
from cloudland_api.services import routers as service

router = APIRouter(prefix="/routers", tags=["networks"],
                   responses={401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}})
RouterId = Annotated[int, Path(ge=1, le=MAX_ID, description="Router id")]
SubnetId = Annotated[int, Path(ge=1, le=MAX_ID, description="Subnet id")]
_CHANGES = {400: {"model": ErrorResponse}, 403: {"model": ErrorResponse}, 409: {"model": ErrorResponse}}


def _public(session: Session, rows: Sequence[Router]) -> list[RouterPublic]:
    subnets, snat = service.subnets_of(session, rows), service.snat_of(session, rows)
    return [RouterPublic(id=r.id, name=r.name, vpc_id=r.vpc_id, subnet_ids=subnets[r.id],
                         external_network_id=r.external_network_id, created_at=r.created_at,
                         snat_addresses=[SnatAddress(hypervisor_id=hv, address=a) for hv, a in snat[r.id]])
            for r in rows]


@router.get("", **allow("router", "read"))
def list_routers(session: SessionDep, caller: CurrentUser, limit: PageLimit = 50, after: PageAfter = None) -> RouterList:
    """One page of the project's routers, by id."""
    rows, next_after = service.list_routers(session, caller, limit, after)
    return RouterList(items=_public(session, rows), limit=limit, next_after=next_after)


@router.post("", status_code=status.HTTP_201_CREATED, **allow("router", "create", responses=_CHANGES))
def create_router(body: RouterCreate, session: SessionDep, caller: CurrentUser) -> RouterPublic:
    """Create the router of a VPC (one per VPC); it connects no subnet yet."""
    return _public(session, [service.create_router(session, caller, body)])[0]


@router.get("/{router_id}", **allow("router", "read"))
def get_router(router_id: RouterId, session: SessionDep, caller: CurrentUser) -> RouterPublic:
    """One router of the project."""
    return _public(session, [service.get_router(session, caller, router_id)])[0]


@router.delete("/{router_id}", status_code=status.HTTP_204_NO_CONTENT, **allow("router", "delete", responses=_CHANGES))
def delete_router(router_id: RouterId, session: SessionDep, caller: CurrentUser, submit: SubmitDep) -> None:
    """Delete a router (admin); 409 while a floating IP is associated in its VPC."""
    service.delete_router(session, caller, router_id)
    submit(follow_ups(session))  # the VPC's syncs, once committed


@router.post("/{router_id}/subnets", **allow("router", "update", responses=_CHANGES))
def add_subnet(router_id: RouterId, body: RouterSubnetRef, session: SessionDep,
               caller: CurrentUser, submit: SubmitDep) -> RouterPublic:
    """Connect a subnet of the router's VPC (it must have a gateway address)."""
    result = _public(session, [service.add_subnet(session, caller, router_id, body.subnet)])[0]
    submit(follow_ups(session))  # the VPC's syncs, once committed
    return result


@router.delete("/{router_id}/subnets/{subnet_id}", **allow("router", "update", responses=_CHANGES))
def remove_subnet(router_id: RouterId, subnet_id: SubnetId, session: SessionDep,
                  caller: CurrentUser, submit: SubmitDep) -> RouterPublic:
    """Disconnect a subnet; 409 while a floating IP is associated to one of its ports."""
    result = _public(session, [service.remove_subnet(session, caller, router_id, subnet_id)])[0]
    submit(follow_ups(session))  # the VPC's syncs, once committed
    return result


@router.put("/{router_id}/gateway", **allow("router", "update", responses=_CHANGES))
def set_gateway(router_id: RouterId, body: RouterGateway, session: SessionDep,
                caller: CurrentUser, submit: SubmitDep) -> RouterPublic:
    """Set the router's gateway on an external network (null: none); SNAT addresses follow."""
    result = _public(session, [service.set_gateway(session, caller, router_id, body.external_network)])[0]
    submit(follow_ups(session))  # the VPC's syncs, once committed
    return result
