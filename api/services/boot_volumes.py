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

A new boot volume (issue 13's last slice; ``POST /instances`` with ``image`` and
``new_boot_volume``): ``plan_new`` checks the type and the size against the image's virtual size
and charges the volumes and their GiB to the quotas, in the create's transaction, before any
row is written; ``make_new`` writes one volume per VM (``<VM name>-boot``, ``creating``, its job
the VM's create job) attached as its vda. The VM's create job makes it (``BootVolume.create``:
the agent's ``vol.create`` from the image, then the domain), on the VM's hypervisor for a
``local`` one (placed by the scheduler as any VM; the volume's ``hypervisor_id`` is set when it
is). ``created`` settles it: ``available`` when the create succeeded; else ``error``, saying
which instance's create failed and why, still attached to that instance (in ``error``) and
made delete-on-termination whatever the create asked, since it never held the tenant's data:
deleting the VM deletes it (and gives its quota back); so does ``volume delete``, once it is
detached.

A VM on a boot volume cannot be rebuilt (its root disk is the volume: make a new volume from an
image instead) nor captured (snapshot the volume), and the boot volume cannot be detached.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cloudland.client import new_job_id
from cloudland.errors import Conflict, InvalidRequest
from cloudland_api.models import VOLUME, Image, Instance, Job, JobState, Volume, VolumeAttachment, VolumeSnapshot
from cloudland_api.models.projects import default_project_id
from cloudland_api.schemas import NewBootVolume
from cloudland_api.services import crud, images, quotas
from cloudland_api.services.identity import Caller
from cloudland_api.settings import ApiSettings
from cloudland_proto.v1 import compute_pb2 as cpb
from cloudland_proto.v1 import image_pb2 as ipb
from cloudland_proto.v1 import storage_pb2 as spb

log = logging.getLogger(__name__)

ROOT_DEVICE = "vda"
LOCAL = "local"
GIB = 1 << 30
NEW_SUFFIX = "-boot"  # a new boot volume's name: its VM's, and this
NAME_MAX = 64  # a volume name's longest (schemas.common.Name)


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


# -- a new boot volume per VM, made from the image by the VM's create job ---------------------------


@dataclass(frozen=True)
class NewVolumes:
    """The new boot volumes of one create: one per VM name, from ``image``."""

    image: Image
    size_gib: int
    type: str
    backend: str
    names: list[str]  # the volumes', in the VMs' order


def plan_new(session: Session, caller: Caller, image: Image, spec: NewBootVolume, vm_names: Sequence[str],
             settings: ApiSettings) -> NewVolumes:
    """The new boot volumes of VMs ``vm_names`` from ``image``, checked (InvalidRequest: an unknown
    type, a size below the image's virtual size, a name too long) and charged to the quotas in
    the caller's transaction (QuotaExceeded: none of them is made)."""
    types = settings.volume_backends
    type_name = spec.type or next(iter(types))
    if type_name not in types:
        raise InvalidRequest(f"new_boot_volume.type {type_name!r} is not a volume type of this cloud (it has "
                             f"{', '.join(types)})")
    needs = images.virtual_size_bytes(settings.state_dir, image)
    if needs > spec.size_gib * GIB:
        raise InvalidRequest(f"new_boot_volume.size_gib {spec.size_gib} is below image {image.name!r} ({image.id})'s "
                             f"virtual size of {needs} bytes: give at least {-(-needs // GIB)}")
    names = [name + NEW_SUFFIX for name in vm_names]
    longest = max(names, key=len)
    if len(longest) > NAME_MAX:
        raise InvalidRequest(f"new boot volume name {longest!r} would be longer than {NAME_MAX} characters; "
                             "use a shorter VM name")
    quotas.charge(session, caller, volumes=len(names), volume_gib=len(names) * spec.size_gib)
    return NewVolumes(image, spec.size_gib, type_name, types[type_name], names)


def make_new(session: Session, caller: Caller, new: NewVolumes, instances: Sequence[Instance], jobs: Sequence[Job],
             delete_on_termination: bool) -> list[Volume]:
    """Each of ``instances`` (flushed) its new boot volume, ``creating`` under its create job
    (``jobs``, in the same order), attached as its vda; Conflict when a volume name is taken."""
    project = caller.project_id if caller.project_id is not None else default_project_id(session.connection(),
                                                                                          caller.org_id)
    taken = session.scalars(select(Volume.name).where(Volume.project_id == project, Volume.name.in_(new.names))
                            .order_by(Volume.name).limit(5)).all()
    if taken:  # names are unique per project (docs/architecture.md)
        raise Conflict(f"volume name {taken[0]!r} is already used in this project"
                       + (f" (and {len(taken) - 1} more)" if len(taken) > 1 else "")
                       + f": a new boot volume is named after its VM ('<name>{NEW_SUFFIX}'); choose another VM name")
    volumes = [Volume(**crud.owner(caller), name=name, size_gib=new.size_gib, type=new.type, backend=new.backend,
                      status="creating", source_image_id=new.image.id, job_id=job.id)
               for name, job in zip(new.names, jobs)]
    try:
        with session.begin_nested():  # a racing create of a volume of one of these names loses here
            session.add_all(volumes)
            session.flush()
    except IntegrityError as exc:
        raise Conflict(f"a volume name of {new.names[0]!r}..{new.names[-1]!r} was taken meanwhile; try again") from exc
    session.add_all(VolumeAttachment(**crud.owner(caller), volume_id=volume.id, instance_id=instance.id,
                                     device=ROOT_DEVICE, status="attaching",
                                     delete_on_termination=delete_on_termination)
                    for volume, instance in zip(volumes, instances))
    log.info("event=boot_volumes_new org_id=%d count=%d size_gib=%d type=%s image_id=%d", caller.org_id,
             len(volumes), new.size_gib, new.type, new.image.id)
    return volumes


def of_instances(session: Session, instance_ids: Iterable[int],
                 image_source: Callable[[Image], ipb.ImageSource] | None = None,
                 hosts: dict[int, int | None] | None = None) -> dict[int, cpb.BootVolume | str]:
    """The boot volume of each of ``instance_ids`` that has one, as vm.create carries it: one query.

    A new one (``creating``, to be made by the create job) carries ``create``: its size and
    ``image_source`` of its image; a ``local`` one is placed on its VM's host (``hosts``:
    instance id → hypervisor). Instead of the message: why it cannot be made (a string)."""
    wanted = set(instance_ids)
    if not wanted:
        return {}
    rows = session.execute(select(VolumeAttachment.instance_id, VolumeAttachment.id, Volume)
                           .join(Volume, Volume.id == VolumeAttachment.volume_id)
                           .where(VolumeAttachment.instance_id.in_(wanted),
                                  VolumeAttachment.device == ROOT_DEVICE)).all()
    boots: dict[int, cpb.BootVolume | str] = {}
    for instance_id, attachment_id, volume in rows:
        boot = cpb.BootVolume(volume=spb.VolumeRef(id=volume.id, backend=volume.backend), attachment_id=attachment_id)
        if volume.status == "creating":
            made = _new_volume(session, volume, image_source)
            if isinstance(made, str):
                boots[instance_id] = made
                continue
            boot.create.CopyFrom(made)
            if volume.backend == LOCAL and hosts is not None:
                volume.hypervisor_id = hosts.get(instance_id)
        boots[instance_id] = boot
    return boots


def _new_volume(session: Session, volume: Volume,
                image_source: Callable[[Image], ipb.ImageSource] | None) -> cpb.NewBootVolume | str:
    """What the agent makes new boot volume ``volume`` from, or why it cannot."""
    image = session.get(Image, volume.source_image_id) if volume.source_image_id is not None else None
    if image is None or image.sha256 is None:
        return f"image {volume.source_image_id} of new boot volume {volume.id} is gone or has no bytes"
    if image_source is None:
        return (f"new boot volume {volume.id}: this API has no image URL for hypervisors to fetch image {image.id} "
                "from (CLOUDLAND_API_PUBLIC_URL)")
    return cpb.NewBootVolume(size_bytes=volume.size_gib * GIB, image=image_source(image))


def created(session: Session, outcomes: Sequence[tuple[int, str, bool, str | None]]) -> None:
    """The creates of (instance id, job id, ok, reason) ended: their boot volumes are ``attached``
    (a failed create leaves an instance in ``error`` that still holds its volume, until it is
    deleted). The new boot volumes they made (those whose job is the create) are ``available``,
    or, on failure, ``error`` and deleted with their VM (the module's docstring)."""
    instance_ids = [instance_id for instance_id, _, _, _ in outcomes]
    if not instance_ids:
        return
    session.execute(update(VolumeAttachment).where(VolumeAttachment.instance_id.in_(instance_ids),
                                                   VolumeAttachment.device == ROOT_DEVICE)
                    .values(status="attached").execution_options(synchronize_session=False))
    by_job = {job_id: (instance_id, ok, reason) for instance_id, job_id, ok, reason in outcomes}
    for volume in session.scalars(select(Volume).where(Volume.job_id.in_(by_job))):
        instance_id, ok, reason = by_job[volume.job_id]
        volume.job_id = None
        if ok:
            volume.status, volume.status_reason = "available", None
            continue
        volume.status = "error"
        volume.status_reason = (f"made for instance {instance_id}, whose create failed: {reason}; it is deleted with "
                                "the instance")
        session.execute(update(VolumeAttachment).where(VolumeAttachment.volume_id == volume.id)
                        .values(delete_on_termination=True).execution_options(synchronize_session=False))
        log.warning("event=boot_volume_failed volume=%d instance=%d reason=%s", volume.id, instance_id, reason)


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
