"""``/api/v1/instances``: VMs of the caller's organisation and the jobs that change them.

Every change answers ``202 Accepted`` with the job(s) it started; follow them with
``GET /api/v1/jobs/{id}?wait=30`` or ``GET /api/v1/jobs?batch=...``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, status
from starlette.requests import Request
from starlette.responses import Response

from cloudland_api import rowjson
from cloudland_api.services import instances as instance_service
from cloudland_api.deps import CurrentUser, PageAfter, PageLimit, SessionDep, SettingsDep, SubmitDep, read
from cloudland_api.policy import allow
from cloudland_api.schemas import (
    MAX_ID,
    NO_NUL,
    BatchAccepted,
    BatchAction,
    CaptureAccepted,
    CaptureRequest,
    ErrorResponse,
    ImagePublic,
    InstanceCreate,
    InstanceList,
    InstancePublic,
    InstanceStatus,
    JobPublic,
    NicAttach,
    PowerAction,
    RebuildRequest,
    ResizeRequest,
)

router = APIRouter(
    prefix="/instances",
    tags=["instances"],
    responses={401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}},
)
InstanceId = Annotated[int, Path(ge=1, le=MAX_ID, description="Instance id")]
PortId = Annotated[int, Path(ge=1, le=MAX_ID, description="Port id")]
_CHANGES = {409: {"model": ErrorResponse}}
_ACCEPTED = status.HTTP_202_ACCEPTED


def _accepted(accepted: instance_service.Accepted) -> BatchAccepted:
    return BatchAccepted(batch=accepted.batch,
                         instances=[InstancePublic.model_validate(i) for i in accepted.instances],
                         jobs=[JobPublic.model_validate(j) for j in accepted.jobs])


# The hot reads answer from rows (rowjson; deps.Reads: on SQLite, on the event loop).
@router.get("", response_model=InstanceList, **allow("instance", "read"))
async def list_instances(
    request: Request,
    caller: CurrentUser,
    limit: PageLimit = 50,
    after: PageAfter = None,
    status: Annotated[InstanceStatus | None, Query(description="Only this status (deleted ones only so)")] = None,
    name: Annotated[str | None, Query(min_length=1, max_length=64, pattern=NO_NUL,
                                      description="Name glob: web-*, db-?")] = None,
    hypervisor: Annotated[int | None, Query(ge=0, le=MAX_ID)] = None,
) -> Response:
    """One page of the organisation's instances by id; pass ``next_after`` back as ``after``."""
    rows, next_after = await read(request, instance_service.list_instance_rows, caller, limit, after, status, name,
                                   hypervisor)
    return rowjson.page(InstanceList, rows, limit=limit, next_after=next_after)


@router.post("", status_code=_ACCEPTED, **allow("instance", "create", responses=_CHANGES))
def create_instances(body: InstanceCreate, session: SessionDep, caller: CurrentUser, submit: SubmitDep,
                     settings: SettingsDep) -> BatchAccepted:
    """Create ``count`` instances (admin or member): one create job each, all in one batch; with
    ``new_boot_volume``, each boots from a new volume its create job makes from ``image``."""
    accepted = instance_service.create_instances(session, caller, body, settings)
    submit(accepted.job_ids)
    return _accepted(accepted)


@router.post("/actions", status_code=_ACCEPTED, **allow("instance", "update", responses=_CHANGES))
def act_many(body: BatchAction, session: SessionDep, caller: CurrentUser, submit: SubmitDep) -> BatchAccepted:
    """Start, stop, reboot or delete many instances at once: all of them or, on any error, none."""
    accepted = instance_service.act_many(session, caller, body.action, body.ids, body.force)
    submit(accepted.job_ids)
    return _accepted(accepted)


# ":int": only digits are an instance id here, so GET or DELETE /instances/actions is a 405 naming
# POST, not a 422 about an id "actions" (schemathesis, issue 15).
@router.get("/{instance_id:int}", response_model=InstancePublic, **allow("instance", "read"))
async def get_instance(instance_id: InstanceId, request: Request, caller: CurrentUser) -> Response:
    """One instance of the organisation (deleted ones too)."""
    return rowjson.one(InstancePublic, await read(request, instance_service.instance_row, caller, instance_id))


def _power(action: Literal["start", "stop", "reboot"]):  # type: ignore[no-untyped-def]
    def route(instance_id: InstanceId, session: SessionDep, caller: CurrentUser, submit: SubmitDep,
              body: PowerAction | None = None) -> JobPublic:
        args = {"force": body.force} if body is not None and action != "start" else {}
        job = instance_service.act(session, caller, instance_id, action, args)
        submit([job.id])
        return JobPublic.model_validate(job)

    route.__name__ = f"{action}_instance"
    route.__doc__ = f"{action.capitalize()} an instance (admin or member); ``force`` skips the guest's shutdown."
    return route


for _action in ("start", "stop", "reboot"):
    router.post(f"/{{instance_id}}/{_action}", status_code=_ACCEPTED,
                **allow("instance", "update", responses=_CHANGES))(_power(_action))


@router.post("/{instance_id}/resize", status_code=_ACCEPTED, **allow("instance", "update", responses=_CHANGES))
def resize_instance(instance_id: InstanceId, body: ResizeRequest, session: SessionDep, caller: CurrentUser,
                    submit: SubmitDep) -> JobPublic:
    """Resize a stopped instance to another flavor."""
    job = instance_service.resize(session, caller, instance_id, body.flavor)
    submit([job.id])
    return JobPublic.model_validate(job)


@router.post("/{instance_id}/rebuild", status_code=_ACCEPTED, **allow("instance", "update", responses=_CHANGES))
def rebuild_instance(instance_id: InstanceId, body: RebuildRequest, session: SessionDep, caller: CurrentUser,
                     submit: SubmitDep) -> JobPublic:
    """Rebuild an instance from an image; its name, uuid and power state stay."""
    job = instance_service.rebuild(session, caller, instance_id, body.image)
    submit([job.id])
    return JobPublic.model_validate(job)


@router.post("/{instance_id}/capture", status_code=_ACCEPTED, **allow("instance", "update", responses=_CHANGES))
def capture_instance(instance_id: InstanceId, body: CaptureRequest, session: SessionDep, caller: CurrentUser,
                     submit: SubmitDep) -> CaptureAccepted:
    """Capture a stopped instance's disk into a new image (``saving`` until its job ends, then
    ``active``): a standalone copy that new instances can boot from."""
    image, job = instance_service.capture(session, caller, instance_id, body)
    submit([job.id])
    return CaptureAccepted(image=ImagePublic.model_validate(image), job=JobPublic.model_validate(job))


@router.post("/{instance_id}/nics", status_code=_ACCEPTED, **allow("instance", "update", responses=_CHANGES))
def attach_nic(instance_id: InstanceId, body: NicAttach, session: SessionDep, caller: CurrentUser,
               submit: SubmitDep) -> JobPublic:
    """Attach a NIC to a running or stopped instance: a new port on ``network`` (a subnet), or a
    port of the organisation bound to no instance (``port``). The port is its next NIC (``device_index``)."""
    job = instance_service.attach_nic(session, caller, instance_id, body)
    submit(instance_service.to_send([job], session))
    return JobPublic.model_validate(job)


@router.delete("/{instance_id}/nics/{port_id}", status_code=_ACCEPTED,
               **allow("instance", "update", responses=_CHANGES))
def detach_nic(instance_id: InstanceId, port_id: PortId, session: SessionDep, caller: CurrentUser,
               submit: SubmitDep) -> JobPublic:
    """Detach the NIC of port ``port_id`` from an instance; the port is kept, bound to nothing (attach
    it again, or delete it). The primary NIC (device 0) cannot be detached (409)."""
    job = instance_service.detach_nic(session, caller, instance_id, port_id)
    submit([job.id])
    return JobPublic.model_validate(job)


@router.delete("/{instance_id:int}", status_code=_ACCEPTED, **allow("instance", "delete", responses=_CHANGES))
def delete_instance(instance_id: InstanceId, session: SessionDep, caller: CurrentUser, submit: SubmitDep) -> JobPublic:
    """Delete an instance: its domain is destroyed and undefined, its row stays as ``deleted``.
    On a gone or removed hypervisor the job ends at once (nothing to send, nothing to clean)."""
    job = instance_service.act(session, caller, instance_id, "delete", {})
    submit(instance_service.to_send([job], session))
    return JobPublic.model_validate(job)

