"""Converging attachments, one hypervisor at a time: the attachments table against the disks each
domain is reported to hold (VmState.disks: device, volume id from the serial, attachment id from
the alias; proto/README.md §11.1).

- An attachment that is ``attached`` whose disk is missing from its instance's domain is attached
  again (an ``attach`` job under the same attachment id: ``vol.attach`` is idempotent on it). A
  recovered domain (reconcile/vm.py) is defined without its volumes, and gets them back so.
- A disk that carries a CloudLand attachment id that no attachment of that instance has (a detach
  the agent never finished, a database restored from before) is detached (``detach`` job on its
  volume), when that volume still exists; otherwise it is reported and left.
- A boot volume (the attachment ``vda``) is never attached again here: a domain without its root
  disk is defined again with it by reconcile/vm.py's ``recover``.
- A disk with no attachment id other than the root disk (``vda``) was attached outside CloudLand:
  it is reported, once, and never adopted.

Volumes with a job in flight, or changed in the last ``SETTLE_S``, and instances with one, are not
judged now: their hypervisor is looked at again later.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import exists, or_, select
from sqlalchemy.orm import Session

from cloudland.client import new_job_id
from cloudland_api.models import VOLUME, Instance, Job, JobState, Volume, VolumeAttachment, utcnow
from cloudland_api.reconcile.vm import SETTLE_S, SYSTEM_BATCH, Domain

log = logging.getLogger(__name__)

ROOT_DEVICE = "vda"


@dataclass
class VolumeVerdict:
    jobs: list[Job] = field(default_factory=list)
    again: set[int] = field(default_factory=set)
    # (hypervisor, domain, device): disks attached outside CloudLand, or of no volume it knows
    foreign: list[tuple[int, str, str]] = field(default_factory=list)


def _job(volume: Volume, action: str, args: dict[str, object]) -> Job:
    job = Job(id=new_job_id(), org_id=volume.org_id, user_id=None, batch=f"{SYSTEM_BATCH}-{new_job_id()[:12]}",
              kind="volume", action=action, subject_type=VOLUME, subject_id=volume.id, args=args,
              state=JobState.pending, attempts=0)
    volume.job_id = job.id
    return job


def sync_hypervisors(session: Session, observed: Mapping[int, Mapping[str, Domain]],
                     now: datetime | None = None) -> VolumeVerdict:
    """Converge the attachments of the instances placed on ``observed``'s hypervisors with the disks
    their domains report. Adds the jobs to ``session``; the caller commits and submits."""
    verdict = VolumeVerdict()
    if not observed:
        return verdict
    settled_before = (now or utcnow()) - timedelta(seconds=SETTLE_S)
    # Only the instances there is something to converge for: an attachment row, or a domain
    # reporting a disk beyond its root. Loading every instance of the hypervisors was 7 % of the
    # API's CPU while VMs were being created (issue 15).
    with_disks = [uuid for domains in observed.values() for uuid, domain in domains.items()
                  if any(attachment_id or device != ROOT_DEVICE for device, _v, attachment_id in domain.disks)]
    instances = {i.uuid: i for i in session.scalars(select(Instance).where(
        Instance.hypervisor_id.in_(list(observed)), Instance.status.in_(("running", "stopped")),
        or_(Instance.uuid.in_(with_disks), exists().where(VolumeAttachment.instance_id == Instance.id))))}
    by_instance: dict[int, list[VolumeAttachment]] = {}
    for attachment in session.scalars(select(VolumeAttachment).where(
            VolumeAttachment.instance_id.in_([i.id for i in instances.values()]))):
        by_instance.setdefault(attachment.instance_id, []).append(attachment)
    for hv, domains in observed.items():
        for uuid, domain in domains.items():
            instance = instances.get(uuid)
            if instance is None or instance.hypervisor_id != hv:
                continue  # not ours, or not placed here: reconcile/vm.py's to judge
            if instance.job_id is not None or instance.updated_at > settled_before:
                verdict.again.add(hv)
                continue
            _converge(session, hv, domain, instance, by_instance.get(instance.id, []), settled_before, verdict)
    session.add_all(verdict.jobs)
    return verdict


def _converge(session: Session, hv: int, domain: Domain, instance: Instance, attachments: list[VolumeAttachment],
              settled_before: datetime, verdict: VolumeVerdict) -> None:
    held = {attachment_id: (device, volume_id) for device, volume_id, attachment_id in domain.disks if attachment_id}
    known = {a.id for a in attachments}
    for attachment in attachments:
        # A boot volume missing from its domain is not hot-plugged: the VM reconciler defines the
        # domain again with it (a recover's vm.create carries it).
        if attachment.status != "attached" or attachment.id in held or attachment.device == ROOT_DEVICE:
            continue
        volume = session.get(Volume, attachment.volume_id)
        if volume is None or volume.job_id is not None or volume.updated_at > settled_before:
            verdict.again.add(hv)
            continue
        log.warning("event=attachment_missing hypervisor=%d domain=%s volume=%d attachment=%d note=attaching again",
                    hv, domain.name, volume.id, attachment.id)
        verdict.jobs.append(_job(volume, "attach", {"attachment_id": attachment.id, "instance_id": instance.id,
                                                    "device": attachment.device}))
    for attachment_id, (device, volume_id) in held.items():
        if attachment_id in known:
            continue
        volume = session.get(Volume, volume_id) if volume_id else None
        if volume is None:
            verdict.foreign.append((hv, domain.name, device))
            continue
        if volume.job_id is not None or volume.updated_at > settled_before:
            verdict.again.add(hv)
            continue
        log.warning("event=attachment_stale hypervisor=%d domain=%s volume=%d attachment=%d note=detaching",
                    hv, domain.name, volume.id, attachment_id)
        verdict.jobs.append(_job(volume, "detach", {"attachment_id": attachment_id, "instance_id": instance.id,
                                                    "device": device}))
    for device, _volume_id, attachment_id in domain.disks:
        if not attachment_id and device != ROOT_DEVICE:
            verdict.foreign.append((hv, domain.name, device))
