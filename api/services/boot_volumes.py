"""Boot from volume (issue 13): a VM whose root disk is a volume.

The boot volume is the instance's attachment as ``vda``, made in the instance's create
transaction (``attach_root``), so the attachments table's constraints decide here too: a volume
attached elsewhere, or booting another VM, is a Conflict. The create job carries it to the
agent (``VmCreateRequest.boot_volume``), which defines the domain with the volume as its root
disk; the VM gets no disk of its own. A ``local`` volume lives on one hypervisor, so the VM is
placed there (the job's ``host``, claimed by the planner: api/jobs/vm.py).

When the VM is deleted its attachment goes (api/jobs/volume.py ``release_attachments``) and the
volume stays, ``available`` to boot a new VM or to attach, unless the create asked for
``delete_on_termination``: then ``terminate`` makes the volume's delete job, in the same
transaction. A volume that has snapshots, or a job in flight, is kept (and says why): its
delete would fail, and the tenant's data must not go by surprise.

A VM on a boot volume cannot be rebuilt (its root disk is the volume: make a new volume from an
image instead) nor captured (snapshot the volume), and the boot volume cannot be detached.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cloudland.client import new_job_id
from cloudland.errors import Conflict
from cloudland_api.models import VOLUME, Image, Instance, Job, JobState, Volume, VolumeAttachment, VolumeSnapshot
from cloudland_api.services import crud
from cloudland_api.services.identity import Caller
from cloudland_proto.v1 import compute_pb2 as cpb
from cloudland_proto.v1 import storage_pb2 as spb

log = logging.getLogger(__name__)

ROOT_DEVICE = "vda"
LOCAL = "local"


def reserve(session: Session, caller: Caller, ref: int | str) -> Volume:
    """The organisation's volume ``ref``, locked, that a new VM may boot from: available, idle and
    attached nowhere; Conflict naming what is in the way."""
    volume = crud.get(session, Volume, caller, ref, "volume", lock=True)
    held = session.scalar(select(VolumeAttachment).where(VolumeAttachment.volume_id == volume.id))
    if held is not None:
        raise Conflict(f"volume {volume.id} ({volume.name}) is attached to instance {held.instance_id} as "
                       f"{held.device} (attachment {held.id}): a VM boots only from a detached volume")
    if volume.job_id is not None:
        raise Conflict(f"volume {volume.id} ({volume.name}) is busy with job {volume.job_id}; wait for it "
                       f"(cloudland job watch {volume.job_id})")
    if volume.status != "available":
        raise Conflict(f"volume {volume.id} ({volume.name}) is {volume.status}: a VM boots only from an "
                       "available volume")
    return volume


def arch_of(session: Session, volume: Volume) -> str:
    """The architecture a VM booting from ``volume`` has: its source image's, else x86_64."""
    image = session.get(Image, volume.source_image_id) if volume.source_image_id is not None else None
    return image.arch if image is not None else "x86_64"


def create_args(volume: Volume) -> dict[str, int]:
    """The create job's args: a local volume's VM goes to the volume's hypervisor (``host``)."""
    return {"host": volume.hypervisor_id} if volume.backend == LOCAL and volume.hypervisor_id is not None else {}


def attach_root(session: Session, caller: Caller, volume: Volume, instance: Instance,
                delete_on_termination: bool) -> VolumeAttachment:
    """The attachment of ``volume`` as ``instance``'s root disk (the instance flushed, with its id);
    Conflict if a racing request attached the volume first."""
    attachment = VolumeAttachment(**crud.owner(caller), volume_id=volume.id, instance_id=instance.id,
                                  device=ROOT_DEVICE, status="attaching", delete_on_termination=delete_on_termination)
    try:
        with session.begin_nested():  # a racing attach or boot of this volume loses here
            session.add(attachment)
    except IntegrityError as exc:
        raise Conflict(f"volume {volume.id} ({volume.name}) was attached meanwhile: a VM boots only from a "
                       "detached volume") from exc
    return attachment


def of_instances(session: Session, instance_ids: Iterable[int]) -> dict[int, cpb.BootVolume]:
    """The boot volume of each of ``instance_ids`` that has one, as vm.create carries it: one query."""
    wanted = set(instance_ids)
    if not wanted:
        return {}
    rows = session.execute(select(VolumeAttachment.instance_id, VolumeAttachment.id, Volume.id, Volume.backend)
                           .join(Volume, Volume.id == VolumeAttachment.volume_id)
                           .where(VolumeAttachment.instance_id.in_(wanted),
                                  VolumeAttachment.device == ROOT_DEVICE)).all()
    return {instance_id: cpb.BootVolume(volume=spb.VolumeRef(id=volume_id, backend=backend),
                                        attachment_id=attachment_id)
            for instance_id, attachment_id, volume_id, backend in rows}


def created(session: Session, instance_ids: list[int]) -> None:
    """The creates of ``instance_ids`` ended: their boot volumes are ``attached`` (a failed create
    leaves an instance in ``error`` that still holds its volume, until it is deleted)."""
    if instance_ids:
        session.execute(update(VolumeAttachment).where(VolumeAttachment.instance_id.in_(instance_ids),
                                                       VolumeAttachment.device == ROOT_DEVICE)
                        .values(status="attached").execution_options(synchronize_session=False))


def refuse(session: Session, instance: Instance, action: str, instead: str) -> None:
    """Conflict if ``instance`` boots from a volume, for ``action`` (``instead``: what to do)."""
    volume_id = session.scalar(select(VolumeAttachment.volume_id).where(
        VolumeAttachment.instance_id == instance.id, VolumeAttachment.device == ROOT_DEVICE))
    if volume_id is not None:
        raise Conflict(f"instance {instance.id} ({instance.name}) boots from volume {volume_id}: it cannot be "
                       f"{action}; {instead}")


def terminate(session: Session, instance_ids: list[int]) -> list[Job]:
    """The delete jobs of the delete-on-termination boot volumes of ``instance_ids``, deleted
    instances (the caller adds them as follow-ups); a volume with snapshots or a job in flight is
    kept, saying why."""
    if not instance_ids:
        return []
    rows = session.scalars(select(Volume).join(VolumeAttachment, VolumeAttachment.volume_id == Volume.id).where(
        VolumeAttachment.instance_id.in_(instance_ids), VolumeAttachment.delete_on_termination.is_(True))).all()
    snapshotted = set(session.scalars(select(VolumeSnapshot.volume_id).where(
        VolumeSnapshot.volume_id.in_([v.id for v in rows]))))
    jobs = []
    for volume in rows:
        if volume.id in snapshotted or volume.job_id is not None:
            why = "it has snapshots" if volume.id in snapshotted else f"job {volume.job_id} is acting on it"
            volume.status_reason = f"kept after its instance's delete (delete on termination): {why}"
            log.warning("event=boot_volume_kept volume=%d reason=%s", volume.id, why)
            continue
        volume.status = "deleting"
        job = Job(id=new_job_id(), org_id=volume.org_id, user_id=None, batch=new_job_id(), kind="volume",
                  action="delete", subject_type=VOLUME, subject_id=volume.id, args={}, state=JobState.pending,
                  attempts=0)
        volume.job_id = job.id
        jobs.append(job)
        log.info("event=boot_volume_terminated volume=%d job=%s", volume.id, job.id)
    return jobs
