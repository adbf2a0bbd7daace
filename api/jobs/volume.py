"""Volume jobs: every change of a volume, its snapshots and attachments (issue 13; services/volumes.py
makes them, proto/v1/storage.proto is the contract).

    create           vol.create (blank, or from image ``image_id``: its source and token are made when
                     sent), or vol.clone of a snapshot (args snapshot_id, source_volume_id)
    delete           vol.delete; the row goes when it succeeds
    extend           vol.extend; live on the attached instance's hypervisor (args instance_id)
    snapshot         vol.snapshot of snapshot ``snapshot_id``
    snapshot_delete  vol.snapshot_delete; the snapshot's row goes when it succeeds
    attach, detach   vol.attach/vol.detach of attachment ``attachment_id`` on the instance's domain

Every job is a unicast. Where it goes: attach, detach and an attached volume's extend to the
instance's hypervisor; the rest to the volume's own (a local volume's) or, for a shared
backend, to any hypervisor that is up. The subject is the volume, so a volume's jobs run one at
a time in order. Settling never leaves a state that can stick: a failed attach removes its
attachment, a failed detach gives it back (``attached``), and the volume's ``job_id`` is
cleared by whatever job it names.
"""

from __future__ import annotations

import logging

from google.protobuf.message import Message
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from cloudland_api.jobs.kinds import Kind, Outcome, Plan, follow_up, register
from cloudland_api.models import VOLUME, Hypervisor, Image, Instance, Job, Volume, VolumeAttachment, VolumeSnapshot
from cloudland_api.services import boot_volumes, hypervisors
from cloudland_proto.v1 import image_pb2 as ipb
from cloudland_proto.v1 import storage_pb2 as spb

log = logging.getLogger(__name__)

GIB = 1 << 30
VOLUME_TIMEOUT_S = 600.0  # a clone copies a whole snapshot; a live unplug waits for the guest
OPERATIONS = {"create": "vol.create", "delete": "vol.delete", "extend": "vol.extend", "snapshot": "vol.snapshot",
              "snapshot_delete": "vol.snapshot_delete", "attach": "vol.attach", "detach": "vol.detach"}


def _ref(volume: Volume) -> spb.VolumeRef:
    return spb.VolumeRef(id=volume.id, backend=volume.backend)


@register
class VolumeJobs(Kind):
    name = "volume"
    subject = VOLUME

    def plan(self, plan: Plan, jobs: list[Job]) -> None:
        """Every job's send; the batch's volumes and instances read with one query each."""
        session = plan.session
        volumes = {v.id: v for v in session.scalars(select(Volume).where(
            Volume.id.in_({job.subject_id for job in jobs})))}
        instance_ids = {job.args["instance_id"] for job in jobs if "instance_id" in job.args}
        instances = ({i.id: i for i in session.scalars(select(Instance).where(Instance.id.in_(instance_ids)))}
                     if instance_ids else {})
        for job in jobs:
            volume = volumes.get(job.subject_id)
            if volume is None:
                plan.decide(job, "failed", f"volume {job.subject_id} is gone")
                continue
            instance = instances.get(job.args["instance_id"]) if "instance_id" in job.args else None
            target = self._target(session, volume, instance)
            if isinstance(target, str):
                # Nothing of a detach is left on a host that is gone: the domain went with it.
                plan.decide(job, "ok" if job.action == "detach" else "failed", target)
                continue
            image = None
            if job.action == "create" and "image_id" in job.args:
                image = self._image_source(plan, job.args["image_id"])
                if isinstance(image, str):
                    plan.decide(job, "failed", image)
                    continue
            operation = "vol.clone" if job.action == "create" and "snapshot_id" in job.args else OPERATIONS[job.action]
            plan.send(job, operation, target, self._request(job, volume, instance, image), VOLUME_TIMEOUT_S)

    @staticmethod
    def _image_source(plan: Plan, image_id: int) -> ipb.ImageSource | str:
        """Where the hypervisor fetches image ``image_id``, or why it cannot."""
        image = plan.session.get(Image, image_id)
        if image is None or image.sha256 is None:
            return f"image {image_id} is gone or has no bytes"
        if plan.settings.guest_source is None:
            return "this API has no image URL for hypervisors to fetch from (CLOUDLAND_API_PUBLIC_URL)"
        return plan.settings.guest_source.image_source(image)

    @staticmethod
    def _target(session: Session, volume: Volume, instance: Instance | None) -> int | str:
        """The hypervisor to send to, or why there is none."""
        if instance is not None and instance.hypervisor_id is not None:
            where = instance.hypervisor_id
        elif volume.hypervisor_id is not None:
            where = volume.hypervisor_id
        else:  # a shared backend's volume, detached: any hypervisor that is up reaches it
            up = session.scalar(select(Hypervisor.id).where(Hypervisor.state == "up").order_by(Hypervisor.id).limit(1))
            if up is None:
                return f"no hypervisor is up to reach backend {volume.backend} of volume {volume.id}"
            return up
        lost = hypervisors.lost_hosts(session, [where]).get(where)
        return hypervisors.lost_reason(where, lost) if lost is not None else where

    @staticmethod
    def _request(job: Job, volume: Volume, instance: Instance | None, image: ipb.ImageSource | None) -> Message:
        ref, args = _ref(volume), job.args
        domain = instance.domain_name if instance is not None else ""
        if job.action == "create" and "snapshot_id" in args:
            source = spb.VolumeRef(id=args["source_volume_id"], backend=volume.backend)
            return spb.VolumeCloneRequest(volume=ref, source=source, snapshot_id=args["snapshot_id"],
                                          size_bytes=args["size_gib"] * GIB)
        if job.action == "create":
            return spb.VolumeCreateRequest(volume=ref, size_bytes=args["size_gib"] * GIB, image=image)
        if job.action == "delete":
            return spb.VolumeDeleteRequest(volume=ref)
        if job.action == "extend":
            return spb.VolumeExtendRequest(volume=ref, size_bytes=args["size_gib"] * GIB, domain=domain)
        if job.action == "snapshot":
            return spb.VolumeSnapshotRequest(volume=ref, snapshot_id=args["snapshot_id"])
        if job.action == "snapshot_delete":
            return spb.VolumeSnapshotDeleteRequest(volume=ref, snapshot_id=args["snapshot_id"])
        if job.action == "attach":
            return spb.VolumeAttachRequest(volume=ref, domain=domain, device=args["device"],
                                           attachment_id=args["attachment_id"])
        assert job.action == "detach", job.action
        return spb.VolumeDetachRequest(volume=ref, domain=domain, attachment_id=args["attachment_id"])

    def settle(self, session: Session, done: list[tuple[Job, Outcome]]) -> None:
        for job, outcome in done:
            volume = session.get(Volume, job.subject_id)
            if volume is None:
                continue
            if volume.job_id == job.id:
                volume.job_id = None
            settle_one(session, job, volume, outcome)


def settle_one(session: Session, job: Job, volume: Volume, outcome: Outcome) -> None:
    """What ``job``'s outcome means for ``volume``, its snapshot or its attachment."""
    failed = None if outcome.ok else f"{job.action} failed: {outcome.reason}"
    volume.status_reason = failed
    args = job.args
    if job.action == "create":
        volume.status = "available" if outcome.ok else "error"
    elif job.action == "delete":
        if outcome.ok:
            session.delete(volume)
        else:
            volume.status = "error"
    elif job.action == "extend" and outcome.ok:
        volume.size_gib = args["size_gib"]
    elif job.action in ("snapshot", "snapshot_delete"):
        snapshot = session.get(VolumeSnapshot, args["snapshot_id"])
        if snapshot is not None:
            snapshot.status_reason = failed
            if outcome.ok and job.action == "snapshot_delete":
                session.delete(snapshot)
            else:
                snapshot.status = "available" if outcome.ok else "error"
    elif job.action in ("attach", "detach"):
        attachment = session.get(VolumeAttachment, args["attachment_id"])
        if attachment is None:
            return
        if outcome.ok == (job.action == "attach"):
            attachment.status = "attached"  # attached, or a failed detach: still attached
        else:
            session.delete(attachment)      # detached, or a failed attach: nothing was attached
    log.info("event=volume_settled job=%s action=%s volume=%d ok=%s", job.id, job.action, volume.id, outcome.ok)


def release_attachments(session: Session, instance_ids: list[int]) -> None:
    """Remove the attachments of deleted instances: their domains, and so the disks, are gone;
    boot volumes to be deleted with them get their delete jobs (services/boot_volumes.py)."""
    if instance_ids:
        follow_up(session, boot_volumes.terminate(session, instance_ids))
        session.execute(delete(VolumeAttachment).where(VolumeAttachment.instance_id.in_(instance_ids)))
