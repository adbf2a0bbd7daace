"""``/api/v1/hypervisors``: the tree's hosts as its reports show them (operator organisation only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from cloudland_api import compute
from cloudland_api.deps import CurrentUser, SessionDep
from cloudland_api.models import Hypervisor
from cloudland_api.scheduler import memory_capacity, vcpu_capacity
from cloudland_api.schemas import MAX_ID, ErrorResponse, HypervisorList, HypervisorPublic, HypervisorUpdate

router = APIRouter(
    prefix="/hypervisors",
    tags=["hypervisors"],
    responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}, 404: {"model": ErrorResponse}},
)
HypervisorId = Annotated[int, Path(ge=0, le=MAX_ID, description="Hypervisor id (the tree's)")]


def public(h: Hypervisor) -> HypervisorPublic:
    """A hypervisor with its capacities under its overcommit ratios."""
    fields = {name: getattr(h, name) for name in HypervisorPublic.model_fields if hasattr(h, name)}
    return HypervisorPublic(**fields, vcpus_capacity=vcpu_capacity(h.cpus, h.cpu_ratio),
                            memory_capacity_mib=memory_capacity(h.memory_mib, h.memory_ratio))


@router.get("")
def list_hypervisors(
    session: SessionDep,
    caller: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> HypervisorList:
    """One page of hypervisors by id, with what instances claim on each."""
    rows, total = compute.list_hypervisors(session, caller, limit, offset)
    return HypervisorList(items=[public(h) for h in rows], total=total, limit=limit, offset=offset)


@router.get("/{hypervisor_id}")
def get_hypervisor(hypervisor_id: HypervisorId, session: SessionDep, caller: CurrentUser) -> HypervisorPublic:
    """One hypervisor."""
    return public(compute.get_hypervisor(session, caller, hypervisor_id))


@router.patch("/{hypervisor_id}")
def update_hypervisor(hypervisor_id: HypervisorId, body: HypervisorUpdate, session: SessionDep,
                      caller: CurrentUser) -> HypervisorPublic:
    """Enable or disable a hypervisor for new VMs, or change its overcommit ratios (admin)."""
    changes = body.model_dump(exclude_none=True)
    return public(compute.update_hypervisor(session, caller, hypervisor_id, changes))
