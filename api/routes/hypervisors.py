"""``/api/v1/hypervisors``: the tree's hosts as its reports show them (operator organisation only);
drain, undrain and remove them (its admins). States and rules: api/services/hypervisors.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Path, Query, Request

from cloudland_api.services import hypervisors
from cloudland_api.deps import CurrentUser, PageAfter, PageLimit, SessionDep
from cloudland_api.models import Hypervisor
from cloudland_api.policy import allow
from cloudland_api.services.scheduler import memory_capacity, vcpu_capacity
from cloudland_api.schemas import (
    MAX_ID,
    ErrorResponse,
    HypervisorDrain,
    HypervisorList,
    HypervisorPublic,
    HypervisorUpdate,
    RemainingInstance,
)

router = APIRouter(
    prefix="/hypervisors",
    tags=["hypervisors"],
    responses={401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}},
)
HypervisorId = Annotated[int, Path(ge=0, le=MAX_ID, description="Hypervisor id (the tree's)")]
_CONFLICT = {409: {"model": ErrorResponse}}


def public(h: Hypervisor) -> HypervisorPublic:
    """A hypervisor with its capacities under its overcommit ratios."""
    fields = {name: getattr(h, name) for name in HypervisorPublic.model_fields if hasattr(h, name)}
    return HypervisorPublic(**fields, vcpus_capacity=vcpu_capacity(h.cpus, h.cpu_ratio),
                            memory_capacity_mib=memory_capacity(h.memory_mib, h.memory_ratio))


@router.get("", **allow("hypervisor", "read"))
def list_hypervisors(
    session: SessionDep,
    caller: CurrentUser,
    limit: PageLimit = 100,
    after: PageAfter = None,
    include_removed: Annotated[bool, Query(description="Also the removed ones (tombstones)")] = False,
) -> HypervisorList:
    """One page of hypervisors by id, with what instances claim on each; removed ones are left
    out unless ``include_removed``."""
    rows, next_after = hypervisors.list_hypervisors(session, caller, limit, after, include_removed)
    return HypervisorList(items=[public(h) for h in rows], limit=limit, next_after=next_after)


@router.get("/{hypervisor_id}", **allow("hypervisor", "read"))
def get_hypervisor(hypervisor_id: HypervisorId, session: SessionDep, caller: CurrentUser) -> HypervisorPublic:
    """One hypervisor (a removed one too)."""
    return public(hypervisors.get_hypervisor(session, caller, hypervisor_id))


@router.patch("/{hypervisor_id}", **allow("hypervisor", "update", responses=_CONFLICT))
def update_hypervisor(hypervisor_id: HypervisorId, body: HypervisorUpdate, session: SessionDep,
                      caller: CurrentUser) -> HypervisorPublic:
    """Enable or disable a hypervisor for new VMs, or change its overcommit ratios (admin)."""
    changes = body.model_dump(exclude_none=True)
    return public(hypervisors.update_hypervisor(session, caller, hypervisor_id, changes))


@router.post("/{hypervisor_id}/drain", **allow("hypervisor", "update", responses=_CONFLICT))
def drain_hypervisor(hypervisor_id: HypervisorId, session: SessionDep, caller: CurrentUser) -> HypervisorDrain:
    """Place no new VMs on a hypervisor until it is undrained, and list the VMs that remain on it,
    of every organisation, to move or delete (admin). Nothing is moved yet. Draining twice is fine."""
    hypervisor, vms = hypervisors.drain(session, caller, hypervisor_id)
    return HypervisorDrain(hypervisor=public(hypervisor),
                           remaining=[RemainingInstance(**vm._asdict()) for vm in vms])


@router.post("/{hypervisor_id}/undrain", **allow("hypervisor", "update", responses=_CONFLICT))
def undrain_hypervisor(hypervisor_id: HypervisorId, session: SessionDep, caller: CurrentUser) -> HypervisorPublic:
    """Let the scheduler place new VMs on a drained hypervisor again (admin); ``enabled`` is a
    separate switch, which this leaves as it is."""
    return public(hypervisors.undrain(session, caller, hypervisor_id))


@router.delete("/{hypervisor_id}", **allow("hypervisor", "delete", responses=_CONFLICT))
def remove_hypervisor(hypervisor_id: HypervisorId, request: Request, session: SessionDep, caller: CurrentUser,
                      background: BackgroundTasks) -> HypervisorPublic:
    """Remove a hypervisor that no VM remains on (admin); 409 names the VMs while some do. It stays
    as a ``removed`` tombstone: never placed on again, its reports ignored, listed only with
    ``include_removed``. Removing it again answers the same."""
    hypervisor = hypervisors.remove(session, caller, hypervisor_id)
    # After the answer, like an image's eviction: the removal is committed whatever the root says.
    background.add_task(hypervisors.forget_in_tree, request.app.state.root_client, request.app.state.sessions,
                        hypervisor_id)
    return public(hypervisor)
