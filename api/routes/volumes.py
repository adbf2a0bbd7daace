"""``/api/v1/volumes``: the organisation's volumes, their attachments and snapshots (issue 13).

Every change answers ``202 Accepted`` with the job it started (null when there was nothing to
do: a second detach); follow it with ``GET /api/v1/jobs/{id}?wait=30``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status
from sqlalchemy.orm import Session

from cloudland_api.deps import CurrentUser, PageAfter, PageLimit, SessionDep, SettingsDep, SubmitDep
from cloudland_api.models import Job, Volume
from cloudland_api.policy import allow
from cloudland_api.schemas import (
    MAX_ID, AttachmentCreate, AttachmentPublic, ErrorResponse, JobPublic, SnapshotAccepted, SnapshotCreate,
    SnapshotList, SnapshotPublic, VolumeAccepted, VolumeCreate, VolumeExtend, VolumeList, VolumePublic,
)
from cloudland_api.services import volumes as service

router = APIRouter(prefix="/volumes", tags=["volumes"],
                   responses={401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}})
VolumeId = Annotated[int, Path(ge=1, le=MAX_ID, description="Volume id")]
AttachmentId = Annotated[int, Path(ge=1, le=MAX_ID, description="Attachment id")]
SnapshotId = Annotated[int, Path(ge=1, le=MAX_ID, description="Snapshot id")]
_CHANGES = {400: {"model": ErrorResponse}, 403: {"model": ErrorResponse}, 409: {"model": ErrorResponse}}
_ACCEPTED = status.HTTP_202_ACCEPTED


def _public(session: Session, volumes: list[Volume]) -> list[VolumePublic]:
    attached = service.attachments_of(session, volumes)
    return [VolumePublic(id=v.id, name=v.name, size_gib=v.size_gib, type=v.type, backend=v.backend,
                         hypervisor_id=v.hypervisor_id, source_image_id=v.source_image_id,
                         source_snapshot_id=v.source_snapshot_id, status=v.status,
                         status_reason=v.status_reason, job_id=v.job_id, created_at=v.created_at,
                         attachment=AttachmentPublic.model_validate(attached[v.id]) if v.id in attached else None)
            for v in volumes]


def _accepted(session: Session, submit: SubmitDep, volume: Volume, job: Job | None) -> VolumeAccepted:
    if job is not None:
        submit([job.id])
    # A deleted volume's row may be gone by now only after the engine settles: it is read here first.
    return VolumeAccepted(volume=_public(session, [volume])[0], job=JobPublic.model_validate(job) if job else None)


@router.get("", **allow("volume", "read"))
def list_volumes(session: SessionDep, caller: CurrentUser, limit: PageLimit = 50, after: PageAfter = None) -> VolumeList:
    """One page of the organisation's volumes, by id; pass ``next_after`` back as ``after``."""
    rows, next_after = service.list_volumes(session, caller, limit, after)
    return VolumeList(items=_public(session, rows), limit=limit, next_after=next_after)


@router.post("", status_code=_ACCEPTED, **allow("volume", "create", responses=_CHANGES))
def create_volume(body: VolumeCreate, session: SessionDep, caller: CurrentUser, settings: SettingsDep,
                  submit: SubmitDep) -> VolumeAccepted:
    """Create a volume (admin or member): blank, from an image, or from a snapshot."""
    volume, job = service.create_volume(session, caller, body, settings)
    return _accepted(session, submit, volume, job)


@router.get("/{volume_id}", **allow("volume", "read"))
def get_volume(volume_id: VolumeId, session: SessionDep, caller: CurrentUser) -> VolumePublic:
    """One volume of the organisation, with its attachment if it has one."""
    return _public(session, [service.get_volume(session, caller, volume_id)])[0]


@router.delete("/{volume_id}", status_code=_ACCEPTED, **allow("volume", "delete", responses=_CHANGES))
def delete_volume(volume_id: VolumeId, session: SessionDep, caller: CurrentUser, submit: SubmitDep) -> VolumeAccepted:
    """Delete a volume (admin); 409 while it is attached or has snapshots."""
    volume, job = service.delete_volume(session, caller, volume_id)
    return _accepted(session, submit, volume, job)


@router.post("/{volume_id}/extend", status_code=_ACCEPTED, **allow("volume", "update", responses=_CHANGES))
def extend_volume(volume_id: VolumeId, body: VolumeExtend, session: SessionDep, caller: CurrentUser,
                  submit: SubmitDep) -> VolumeAccepted:
    """Grow a volume (admin or member); live when it is attached to a running instance."""
    volume, job = service.extend_volume(session, caller, volume_id, body.size_gib)
    return _accepted(session, submit, volume, job)


@router.post("/{volume_id}/attachments", status_code=_ACCEPTED, **allow("volume", "update", responses=_CHANGES))
def attach_volume(volume_id: VolumeId, body: AttachmentCreate, session: SessionDep, caller: CurrentUser,
                  submit: SubmitDep) -> VolumeAccepted:
    """Attach a volume to an instance (admin or member); 409 when it is attached already."""
    volume, job = service.attach(session, caller, volume_id, body.instance)
    return _accepted(session, submit, volume, job)


@router.delete("/{volume_id}/attachments/{attachment_id}", status_code=_ACCEPTED,
               **allow("volume", "update", responses=_CHANGES))
def detach_volume(volume_id: VolumeId, attachment_id: AttachmentId, session: SessionDep, caller: CurrentUser,
                  submit: SubmitDep) -> VolumeAccepted:
    """Detach attachment ``attachment_id`` (admin or member). Once it is gone (or going) this is
    a success with no job: a repeated or late detach never removes a newer attachment."""
    volume, job = service.detach(session, caller, volume_id, attachment_id)
    return _accepted(session, submit, volume, job)


@router.get("/{volume_id}/snapshots", **allow("volume", "read"))
def list_snapshots(volume_id: VolumeId, session: SessionDep, caller: CurrentUser, limit: PageLimit = 50,
                   after: PageAfter = None) -> SnapshotList:
    """One page of a volume's snapshots, by id."""
    rows, next_after = service.list_snapshots(session, caller, volume_id, limit, after)
    return SnapshotList(items=[SnapshotPublic.model_validate(s) for s in rows], limit=limit, next_after=next_after)


@router.post("/{volume_id}/snapshots", status_code=_ACCEPTED, **allow("volume", "update", responses=_CHANGES))
def create_snapshot(volume_id: VolumeId, body: SnapshotCreate, session: SessionDep, caller: CurrentUser,
                    submit: SubmitDep) -> SnapshotAccepted:
    """Snapshot a volume (admin or member)."""
    snapshot, job = service.create_snapshot(session, caller, volume_id, body.name)
    submit([job.id])
    return SnapshotAccepted(snapshot=SnapshotPublic.model_validate(snapshot), job=JobPublic.model_validate(job))


@router.delete("/{volume_id}/snapshots/{snapshot_id}", status_code=_ACCEPTED,
               **allow("volume", "delete", responses=_CHANGES))
def delete_snapshot(volume_id: VolumeId, snapshot_id: SnapshotId, session: SessionDep, caller: CurrentUser,
                    submit: SubmitDep) -> SnapshotAccepted:
    """Delete a snapshot (admin); 409 while a volume is being made from it."""
    snapshot, job = service.delete_snapshot(session, caller, volume_id, snapshot_id)
    submit([job.id])
    return SnapshotAccepted(snapshot=SnapshotPublic.model_validate(snapshot), job=JobPublic.model_validate(job))
