"""``/api/v1/external-networks``: the operator's provider segments, shared by every organisation (issue 12)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from cloudland_api.deps import CurrentUser, PageAfter, PageLimit, SessionDep
from cloudland_api.models import ExternalNetwork
from cloudland_api.policy import allow
from cloudland_api.schemas import MAX_ID, ErrorResponse
from cloudland_api.schemas.networks import PoolPublic
from cloudland_api.schemas.routers import ExternalNetworkCreate, ExternalNetworkList, ExternalNetworkPublic
from cloudland_api.services import routers as service

router = APIRouter(prefix="/external-networks", tags=["networks"],
                   responses={401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}})
ExternalId = Annotated[int, Path(ge=1, le=MAX_ID, description="External network id")]
_CHANGES = {403: {"model": ErrorResponse}, 409: {"model": ErrorResponse}}


def _public(row: ExternalNetwork) -> ExternalNetworkPublic:
    return ExternalNetworkPublic(id=row.id, name=row.name, cidr=row.cidr, gateway=row.gateway, bridge=row.bridge,
                                 allocation_pools=[PoolPublic(start=a, end=b) for a, b in row.allocation_pools],
                                 created_at=row.created_at)


@router.get("", **allow("external_network", "read"))
def list_external_networks(session: SessionDep, caller: CurrentUser, limit: PageLimit = 50,
                           after: PageAfter = None) -> ExternalNetworkList:
    """One page of the external networks (every organisation may use them), by id."""
    rows, next_after = service.list_external(session, limit, after)
    return ExternalNetworkList(items=[_public(r) for r in rows], limit=limit, next_after=next_after)


@router.post("", status_code=status.HTTP_201_CREATED,
             **allow("external_network", "create", responses={400: {"model": ErrorResponse}, **_CHANGES}))
def create_external_network(body: ExternalNetworkCreate, session: SessionDep, caller: CurrentUser) -> ExternalNetworkPublic:
    """Define a provider segment (operators): its CIDR, next hop, pools, and the bridge every hypervisor has on it."""
    return _public(service.create_external(session, caller, body))


@router.get("/{external_id}", **allow("external_network", "read"))
def get_external_network(external_id: ExternalId, session: SessionDep, caller: CurrentUser) -> ExternalNetworkPublic:
    """One external network."""
    return _public(service.get_external(session, external_id))


@router.delete("/{external_id}", status_code=status.HTTP_204_NO_CONTENT,
               **allow("external_network", "delete", responses=_CHANGES))
def delete_external_network(external_id: ExternalId, session: SessionDep, caller: CurrentUser) -> None:
    """Delete an external network (operators); 409 while a router or an address uses it."""
    service.delete_external(session, caller, external_id)
