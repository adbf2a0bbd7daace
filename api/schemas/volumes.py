"""Volume, snapshot and attachment bodies (issue 13)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from cloudland_api.schemas.common import Name, Page, Ref, SizeGib, _Request
from cloudland_api.schemas.instances import JobPublic


class VolumeCreate(_Request):
    """A new volume: blank of ``size_gib``, from ``image`` (its content; ``size_gib`` at least the
    image's virtual size), or from ``snapshot`` (at least its size; the snapshot's volume's type).
    ``type`` defaults to the operator's first volume type. A local volume lives on one
    hypervisor: that of ``instance`` if given (to attach it there), else the hypervisor holding
    the fewest local volumes."""

    name: Name
    size_gib: SizeGib | None = None
    type: Name | None = None
    image: Ref | None = None
    snapshot: Ref | None = None
    instance: Ref | None = None


class VolumeExtend(_Request):
    """The new size: larger than the volume's (volumes never shrink)."""

    size_gib: SizeGib


class AttachmentCreate(_Request):
    """Attach the volume to ``instance``; the device name (vdb, vdc...) is allocated."""

    instance: Ref


class SnapshotCreate(_Request):
    name: Name


class AttachmentPublic(BaseModel):
    """A volume on an instance as ``device``: ``attaching`` or ``detaching`` while its job runs."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    volume_id: int
    instance_id: int
    device: str                  # vda: the instance boots from the volume
    status: str
    delete_on_termination: bool  # a boot volume deleted with its instance
    created_at: datetime


class VolumePublic(BaseModel):
    """A volume: size, type and backend, where a local one lives, status, its attachment if any."""

    id: int
    name: str
    size_gib: int
    type: str
    backend: str
    hypervisor_id: int | None
    source_image_id: int | None
    source_snapshot_id: int | None
    status: str
    status_reason: str | None
    job_id: str | None
    attachment: AttachmentPublic | None
    created_at: datetime


class VolumeList(Page):
    items: list[VolumePublic]


class SnapshotPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    volume_id: int
    size_gib: int
    status: str
    status_reason: str | None
    created_at: datetime


class SnapshotList(Page):
    items: list[SnapshotPublic]


class VolumeAccepted(BaseModel):
    """What a change started: the volume as it is now and its job (null when nothing was to do)."""

    volume: VolumePublic
    job: JobPublic | None


class SnapshotAccepted(BaseModel):
    snapshot: SnapshotPublic
    job: JobPublic | None
