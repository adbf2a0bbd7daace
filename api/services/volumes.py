"""Volumes, their snapshots and attachments, apart from HTTP (issue 13).

Every change writes the desired state and its ``volume`` job in one transaction
(api/jobs/volume.py settles it), with the volume's row locked (``FOR UPDATE`` on PostgreSQL;
SQLite's write transactions are serial anyway), so two changes of one volume never both see it
idle: the second is a Conflict naming the job in flight. Refusals are Conflicts (409) naming what
is in the way: attaching an attached volume, deleting an attached or snapshotted one. The
attachments table's unique constraints are the last word: one attachment per volume, one
device name per instance. A detach names its attachment by id and is a no-op once it is gone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cloudland.client import new_job_id
from cloudland.errors import Conflict, InvalidRequest, NotFound
from cloudland_api.db import for_change
from cloudland_api.models import VOLUME, Hypervisor, Instance, Job, JobState, Volume, VolumeAttachment, VolumeSnapshot
from cloudland_api.schemas import VolumeCreate
from cloudland_api.services import boot_volumes, crud, hypervisors, quotas
from cloudland_api.services.identity import Caller
from cloudland_api.services.instances import resolve_image
from cloudland_api.settings import ApiSettings

log = logging.getLogger(__name__)
# An instance named by name is a live one: a deleted instance's name is free for another.
LIVE = (Instance.status != "deleted",)

LOCAL = "local"
DEVICES = [f"vd{c}" for c in "bcdefghijklmnopqrstuvwxyz"]  # vda is the root disk's
ATTACHABLE = ("running", "stopped")


# -- reading ----------------------------------------------------------------------------------


def get_volume(session: Session, caller: Caller, ref: int | str, *, lock: bool = False) -> Volume:
    return crud.get(session, Volume, caller, ref, "volume", lock=lock)


def list_volumes(session: Session, caller: Caller, limit: int, after: str | None) -> tuple[list[Volume], str | None]:
    return crud.page(session, Volume, caller, limit, after)


def attachments_of(session: Session, volumes: Sequence[Volume]) -> dict[int, VolumeAttachment]:
    """Each volume's attachment, if it has one: one query."""
    ids = [v.id for v in volumes]
    if not ids:
        return {}
    return {a.volume_id: a for a in session.scalars(select(VolumeAttachment).where(VolumeAttachment.volume_id.in_(ids)))}


def get_snapshot(session: Session, caller: Caller, ref: int | str, *, lock: bool = False) -> VolumeSnapshot:
    return crud.get(session, VolumeSnapshot, caller, ref, "snapshot", lock=lock)


def list_snapshots(session: Session, caller: Caller, volume_id: int, limit: int,
                   after: str | None) -> tuple[list[VolumeSnapshot], str | None]:
    volume = get_volume(session, caller, volume_id)
    return crud.page(session, VolumeSnapshot, caller, limit, after, VolumeSnapshot.volume_id == volume.id)


# -- the quota seam -----------------------------------------------------------------------------


def volume_usage(session: Session, org_id: int) -> tuple[int, int]:
    """(volumes, GiB) organisation ``org_id`` holds now, for its quota (issue 14's quotas call it):
    every volume that exists, whatever its status (one being deleted holds its space until it is
    gone), in one query."""
    count, gib = session.execute(select(func.count(Volume.id), func.coalesce(func.sum(Volume.size_gib), 0))
                                 .where(Volume.org_id == org_id)).one()
    return int(count), int(gib)


def charge_quota(session: Session, caller: Caller, volumes: int, gib: int) -> None:
    """Volumes and their gigabytes counted against the project's and organisation's quotas
    (services/quotas.py): called by every create and extend with what they add, before anything
    is written, in the transaction that writes it."""
    quotas.charge(session, caller, volumes=volumes, volume_gib=gib)


# -- jobs ---------------------------------------------------------------------------------------


def _start(session: Session, caller: Caller, volume: Volume, action: str, args: dict[str, Any]) -> Job:
    """``action``'s job on ``volume`` (flushed, so it has its id), made the volume's one job."""
    job = Job(id=new_job_id(), **crud.owner(caller), user_id=caller.user_id, batch=new_job_id(), kind="volume",
              action=action, subject_type=VOLUME, subject_id=volume.id, args=args, state=JobState.pending,
              attempts=0)
    session.add(job)
    volume.job_id = job.id
    log.info("event=job_created job=%s kind=volume action=%s volume=%d org_id=%d", job.id, action, volume.id,
             caller.org_id)
    return job


def _idle(volume: Volume, doing: str) -> None:
    """Conflict unless the volume has no job in flight and can be ``doing`` (its status allows)."""
    if volume.job_id is not None:
        raise Conflict(f"volume {volume.id} ({volume.name}) is busy with job {volume.job_id}; "
                       f"wait for it (cloudland job watch {volume.job_id})")
    allowed = ("available", "error") if doing == "delete" else ("available",)
    if volume.status not in allowed:
        raise Conflict(f"volume {volume.id} ({volume.name}) is {volume.status}: cannot {doing} it")


# -- volumes ------------------------------------------------------------------------------------


def _home(session: Session, caller: Caller, spec: VolumeCreate) -> int:
    """The hypervisor a new local volume lives on: ``spec.instance``'s, or the up hypervisor
    open to new VMs that holds the fewest local volumes."""
    if spec.instance is not None:
        instance = crud.get(session, Instance, caller, spec.instance, "instance", named=LIVE)
        if instance.hypervisor_id is None or instance.status == "deleted":
            raise Conflict(f"instance {instance.id} ({instance.name}) is on no hypervisor: a local volume "
                           "cannot be placed beside it")
        return instance.hypervisor_id
    held = (select(Volume.hypervisor_id, func.count().label("n")).where(Volume.backend == LOCAL)
            .group_by(Volume.hypervisor_id).subquery())
    chosen = session.scalar(
        select(Hypervisor.id).outerjoin(held, held.c.hypervisor_id == Hypervisor.id)
        .where(Hypervisor.state == "up", Hypervisor.enabled.is_(True), Hypervisor.draining.is_(False))
        .order_by(func.coalesce(held.c.n, 0), Hypervisor.id).limit(1))
    if chosen is None:
        raise Conflict("no hypervisor is up to hold a local volume: try again when one is, or choose a shared type")
    return chosen


def create_volume(session: Session, caller: Caller, spec: VolumeCreate, settings: ApiSettings) -> tuple[Volume, Job]:
    """A new volume and its create job (blank, from an image or from a snapshot), committed together."""
    types = settings.volume_backends
    snapshot = source = image = None
    if spec.snapshot is not None and spec.image is not None:
        raise InvalidRequest("a volume is made from an image or from a snapshot, not both")
    if spec.image is not None:
        image = resolve_image(session, caller, spec.image)
    if spec.snapshot is not None:
        snapshot = get_snapshot(session, caller, spec.snapshot)
        if snapshot.status != "available":
            raise Conflict(f"snapshot {snapshot.id} ({snapshot.name}) is {snapshot.status}: a volume is made "
                           "only from an available one")
        source = session.get(Volume, snapshot.volume_id)
        assert source is not None  # a snapshot's volume cannot be deleted (RESTRICT)
        if spec.type is not None and spec.type != source.type:
            raise InvalidRequest(f"type {spec.type!r} differs from snapshot {snapshot.id}'s volume type "
                                 f"{source.type!r}: a volume from a snapshot stays in its backend")
        if spec.size_gib is not None and spec.size_gib < snapshot.size_gib:
            raise InvalidRequest(f"size_gib {spec.size_gib} is below snapshot {snapshot.id}'s {snapshot.size_gib}")
        type_name, size = source.type, spec.size_gib or snapshot.size_gib
    else:
        if spec.size_gib is None:
            raise InvalidRequest("size_gib is required for a volume not made from a snapshot")
        type_name, size = spec.type or next(iter(types)), spec.size_gib
        if type_name not in types:
            raise InvalidRequest(f"type {type_name!r} is not a volume type of this cloud (it has "
                                 f"{', '.join(types)})")
    backend = source.backend if source is not None else types[type_name]
    if source is not None:
        home = source.hypervisor_id
    else:
        home = _home(session, caller, spec) if backend == LOCAL else None
    charge_quota(session, caller, volumes=1, gib=size)
    volume = crud.insert_named(session, Volume(**crud.owner(caller), name=spec.name, size_gib=size, type=type_name,
                                               backend=backend, hypervisor_id=home, status="creating",
                                               source_image_id=image.id if image else None,
                                               source_snapshot_id=snapshot.id if snapshot else None),
                               "volume", commit=False)
    args: dict[str, Any] = {"size_gib": size}
    if image is not None:
        args["image_id"] = image.id
    if snapshot is not None and source is not None:
        args |= {"snapshot_id": snapshot.id, "source_volume_id": source.id}
    job = _start(session, caller, volume, "create", args)
    session.commit()
    return volume, job


def delete_volume(session: Session, caller: Caller, volume_id: int) -> tuple[Volume, Job]:
    """The delete job of a detached volume without snapshots (admin); Conflict naming what is in the way."""
    volume = get_volume(session, caller, volume_id, lock=True)
    attachment = attachments_of(session, [volume]).get(volume.id)
    if attachment is not None:
        raise Conflict(f"volume {volume.id} ({volume.name}) is attached to instance {attachment.instance_id} as "
                       f"{attachment.device} (attachment {attachment.id}): detach it first")
    snapshots = session.scalars(select(VolumeSnapshot.id).where(VolumeSnapshot.volume_id == volume.id)
                                .order_by(VolumeSnapshot.id)).all()
    if snapshots:
        raise Conflict(f"volume {volume.id} ({volume.name}) has snapshots {', '.join(map(str, snapshots))}: "
                       "delete them first")
    _idle(volume, "delete")
    volume.status = "deleting"
    job = _start(session, caller, volume, "delete", {})
    session.commit()
    return volume, job


def extend_volume(session: Session, caller: Caller, volume_id: int, size_gib: int) -> tuple[Volume, Job]:
    """The extend job to ``size_gib``, live when the volume is attached to a running instance."""
    volume = get_volume(session, caller, volume_id, lock=True)
    _idle(volume, "extend")
    if size_gib <= volume.size_gib:
        raise InvalidRequest(f"size_gib {size_gib} must be larger than volume {volume.id}'s {volume.size_gib}: "
                             "volumes never shrink")
    charge_quota(session, caller, volumes=0, gib=size_gib - volume.size_gib)
    attachment = attachments_of(session, [volume]).get(volume.id)
    args: dict[str, Any] = {"size_gib": size_gib}
    if attachment is not None:
        args["instance_id"] = attachment.instance_id
    job = _start(session, caller, volume, "extend", args)
    session.commit()
    return volume, job


# -- attachments --------------------------------------------------------------------------------


def attach(session: Session, caller: Caller, volume_id: int, instance_ref: int | str) -> tuple[Volume, Job]:
    """A new attachment of the volume to an instance, its device allocated, and its attach job.

    Conflict when the volume is attached already (or being attached: its job is in flight), the
    instance is busy or on no hypervisor, or a local volume lives on another hypervisor."""
    volume = get_volume(session, caller, volume_id, lock=True)
    held = attachments_of(session, [volume]).get(volume.id)
    if held is not None:
        raise Conflict(f"volume {volume.id} ({volume.name}) is already attached to instance {held.instance_id} as "
                       f"{held.device} (attachment {held.id})")
    _idle(volume, "attach")
    instance = crud.get(session, Instance, caller, instance_ref, "instance", lock=True, named=LIVE)
    if instance.status not in ATTACHABLE or instance.hypervisor_id is None:
        raise Conflict(f"instance {instance.id} ({instance.name}) is {instance.status}: a volume attaches to a "
                       "running or stopped instance")
    if instance.job_id is not None:
        raise Conflict(f"instance {instance.id} ({instance.name}) is busy with job {instance.job_id}; wait for it")
    lost = hypervisors.lost_hosts(session, [instance.hypervisor_id]).get(instance.hypervisor_id)
    if lost is not None:
        raise hypervisors.unreachable(f"attach volume {volume.id} to instance {instance.id}", instance.hypervisor_id,
                                      lost)
    if volume.backend == LOCAL and volume.hypervisor_id != instance.hypervisor_id:
        raise Conflict(f"volume {volume.id} ({volume.name}) is local to hypervisor {volume.hypervisor_id} and "
                       f"instance {instance.id} runs on hypervisor {instance.hypervisor_id}: a local volume "
                       "attaches only beside it (make one with --instance, or use a shared type)")
    taken = set(session.scalars(select(VolumeAttachment.device).where(VolumeAttachment.instance_id == instance.id)))
    device = next((d for d in DEVICES if d not in taken), None)
    if device is None:
        raise Conflict(f"instance {instance.id} ({instance.name}) has {len(DEVICES)} volumes: no device name is free")
    attachment = VolumeAttachment(**crud.owner(caller), volume_id=volume.id, instance_id=instance.id, device=device,
                                  status="attaching")
    try:
        with session.begin_nested():  # a racing attach of this volume, or to this device, loses here
            session.add(attachment)
    except IntegrityError as exc:
        raise Conflict(f"volume {volume.id} ({volume.name}) was attached meanwhile, or device {device} of "
                       f"instance {instance.id} was taken: list the volume and try again") from exc
    job = _start(session, caller, volume, "attach",
                 {"attachment_id": attachment.id, "instance_id": instance.id, "device": device})
    session.commit()
    return volume, job


def detach(session: Session, caller: Caller, volume_id: int, attachment_id: int) -> tuple[Volume, Job | None]:
    """The detach job of attachment ``attachment_id``; None when it is gone or already being
    detached (a second detach is a no-op success, and one naming an older attachment never
    touches a newer one)."""
    volume = get_volume(session, caller, volume_id, lock=True)
    attachment = session.scalar(select(VolumeAttachment).where(
        VolumeAttachment.id == attachment_id, VolumeAttachment.volume_id == volume.id,
        VolumeAttachment.org_id == caller.org_id))
    if attachment is None or attachment.status == "detaching":
        return volume, None
    if attachment.device == boot_volumes.ROOT_DEVICE:
        raise Conflict(f"volume {volume.id} ({volume.name}) is the boot volume of instance {attachment.instance_id} "
                       f"(attachment {attachment.id}): it cannot be detached; delete the instance (the volume stays "
                       "unless it was made to go with it)")
    if volume.job_id is not None:
        raise Conflict(f"volume {volume.id} ({volume.name}) is busy with job {volume.job_id}; wait for it "
                       f"(cloudland job watch {volume.job_id})")
    attachment.status = "detaching"
    job = _start(session, caller, volume, "detach",
                 {"attachment_id": attachment.id, "instance_id": attachment.instance_id, "device": attachment.device})
    session.commit()
    return volume, job


# -- snapshots ----------------------------------------------------------------------------------


def create_snapshot(session: Session, caller: Caller, volume_id: int, name: str) -> tuple[VolumeSnapshot, Job]:
    volume = get_volume(session, caller, volume_id, lock=True)
    _idle(volume, "snapshot")
    snapshot = crud.insert_named(session, VolumeSnapshot(**crud.owner(caller), volume_id=volume.id, name=name,
                                                         size_gib=volume.size_gib, status="creating"),
                                 "snapshot", commit=False)
    job = _start(session, caller, volume, "snapshot", {"snapshot_id": snapshot.id})
    session.commit()
    return snapshot, job


def delete_snapshot(session: Session, caller: Caller, volume_id: int, snapshot_id: int) -> tuple[VolumeSnapshot, Job]:
    volume = get_volume(session, caller, volume_id, lock=True)
    snapshot = session.scalar(for_change(select(VolumeSnapshot).where(
        VolumeSnapshot.id == snapshot_id, VolumeSnapshot.volume_id == volume.id,
        VolumeSnapshot.org_id == caller.org_id)))
    if snapshot is None:
        raise NotFound(f"snapshot {snapshot_id} of volume {volume.id} not found")
    making = session.scalar(select(Volume.id).where(Volume.source_snapshot_id == snapshot.id,
                                                    Volume.status == "creating").limit(1))
    if making is not None:
        raise Conflict(f"volume {making} is being made from snapshot {snapshot.id} ({snapshot.name}): wait for it")
    _idle(volume, "delete a snapshot of")
    snapshot.status = "deleting"
    job = _start(session, caller, volume, "snapshot_delete", {"snapshot_id": snapshot.id})
    session.commit()
    return snapshot, job
