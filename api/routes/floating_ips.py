"""``/api/v1/floating-ips``: the project's addresses on external networks, associated to ports (issue 12)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from cloudland_api.deps import CurrentUser, PageAfter, PageLimit, SessionDep, SubmitDep
from cloudland_api.jobs import follow_ups
from cloudland_api.policy import allow
from cloudland_api.schemas import MAX_ID, ErrorResponse
from cloudland_api.schemas.routers import FloatingIpAssociate, FloatingIpCreate, FloatingIpList, FloatingIpPublic
from cloudland_api.services import routers as service

router = APIRouter(prefix="/floating-ips", tags=["networks"],
                   responses={401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}})
FloatingId = Annotated[int, Path(ge=1, le=MAX_ID, description="Floating IP id")]
_CHANGES = {400: {"model": ErrorResponse}, 403: {"model": ErrorResponse}, 409: {"model": ErrorResponse}}


@router.get("", **allow("floating_ip", "read"))
def list_floating_ips(session: SessionDep, caller: CurrentUser, limit: PageLimit = 50,
                      after: PageAfter = None) -> FloatingIpList:
    """One page of the project's floating IPs, by id."""
    rows, next_after = service.list_floating(session, caller, limit, after)
    return FloatingIpList(items=[FloatingIpPublic.model_validate(r) for r in rows], limit=limit, next_after=next_after)


@router.post("", status_code=status.HTTP_201_CREATED, **allow("floating_ip", "create", responses=_CHANGES))
def allocate_floating_ip(body: FloatingIpCreate, session: SessionDep, caller: CurrentUser) -> FloatingIpPublic:
    """Allocate the lowest free address of an external network's pools; 409 when none is free."""
    return FloatingIpPublic.model_validate(service.allocate(session, caller, body.external_network))


@router.get("/{fip_id}", **allow("floating_ip", "read"))
def get_floating_ip(fip_id: FloatingId, session: SessionDep, caller: CurrentUser) -> FloatingIpPublic:
    """One floating IP of the project."""
    return FloatingIpPublic.model_validate(service.get_floating(session, caller, fip_id))


@router.put("/{fip_id}/port", **allow("floating_ip", "update", responses=_CHANGES))
def associate_floating_ip(fip_id: FloatingId, body: FloatingIpAssociate, session: SessionDep,
                          caller: CurrentUser, submit: SubmitDep) -> FloatingIpPublic:
    """Associate to a port behind a router with a gateway on the floating IP's external network."""
    result = FloatingIpPublic.model_validate(service.associate(session, caller, fip_id, body))
    submit(follow_ups(session))  # the VPC's syncs, once committed
    return result


@router.delete("/{fip_id}/port", **allow("floating_ip", "update", responses=_CHANGES))
def disassociate_floating_ip(fip_id: FloatingId, session: SessionDep,
                             caller: CurrentUser, submit: SubmitDep) -> FloatingIpPublic:
    """Disassociate from its port: the VM is no longer reachable on it."""
    result = FloatingIpPublic.model_validate(service.disassociate(session, caller, fip_id))
    submit(follow_ups(session))  # the VPC's syncs, once committed
    return result


@router.delete("/{fip_id}", status_code=status.HTTP_204_NO_CONTENT, **allow("floating_ip", "delete", responses=_CHANGES))
def release_floating_ip(fip_id: FloatingId, session: SessionDep, caller: CurrentUser, submit: SubmitDep) -> None:
    """Release (disassociating it first if needed)."""
    service.release(session, caller, fip_id)
    submit(follow_ups(session))  # the VPC's syncs, once committed
