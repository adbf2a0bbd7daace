"""VM jobs: create, start, stop, reboot, resize, rebuild, capture, delete on one instance, on its
one hypervisor; and, made by the reconciler (api/reconcile/vm.py), ``recover`` (its domain again,
on its own disk) and ``purge`` (a leftover domain of it on another hypervisor).

Planning places new instances (the scheduler's claims, all of a batch at once), claims a
resize's growth, ends jobs for hosts the tree no longer has, and builds each operation's
request message (guest.py). Settling moves the instance to what the outcome means: its status,
its claims, a capture's image.
"""

from __future__ import annotations

import logging

from google.protobuf.message import Message
from sqlalchemy import select
from sqlalchemy.orm import Session

from cloudland_api.jobs.engine import end
from cloudland_api.jobs.guest import agent_request, vm_nics
from cloudland_api.jobs.kinds import Kind, Outcome, Plan, follow_up, register
from cloudland_api.jobs.volume import VOLUME_TIMEOUT_S, release_attachments
from cloudland_api.models import INSTANCE, Image, Instance, Job, JobState, Port
from cloudland_api.services import boot_volumes, hypervisors, netstate, scheduler
from cloudland_proto.v1 import compute_pb2 as cpb

log = logging.getLogger(__name__)

OPERATIONS = {"create": "vm.create", "start": "vm.start", "stop": "vm.stop", "reboot": "vm.reboot",
              "delete": "vm.delete", "resize": "vm.resize", "rebuild": "vm.rebuild", "capture": "vm.capture",
              "recover": "vm.create", "purge": "vm.delete", "attach_nic": "vm.attach_nic",
              "detach_nic": "vm.detach_nic"}
WITH_NICS = ("create", "recover", "rebuild", "attach_nic")  # requests that carry the instance's NICs
NIC_ACTIONS = ("attach_nic", "detach_nic")  # the instance keeps its status through them
# The instance status a successful action leaves.
SETTLED = {"create": "running", "start": "running", "stop": "stopped", "reboot": "running",
           "resize": "stopped", "delete": "deleted", "capture": "stopped"}


@register
class VmJobs(Kind):
    name = "vm"
    subject = INSTANCE

    def plan(self, plan: Plan, jobs: list[Job]) -> None:
        """New VMs placed all at once (one claim per host), then every job's send."""
        session = plan.session
        instances = {i.id: i for i in session.scalars(select(Instance).where(
            Instance.id.in_({job.subject_id for job in jobs})))}
        rows = [(job, instances[job.subject_id]) for job in jobs if job.subject_id in instances]
        for job in jobs:
            if job.subject_id not in instances:
                plan.decide(job, "failed", f"instance {job.subject_id} no longer exists")
        placer = scheduler.Placer(session, plan.settings.weigher)
        # Jobs for hosts the tree no longer has (gone while the job waited or was retried) end
        # here: nothing sent there can arrive. New VMs below are placed on up hosts only.
        lost = hypervisors.lost_hosts(session, (instance.hypervisor_id for _, instance in rows))
        new = [(job, instance) for job, instance in rows if job.action == "create" and instance.hypervisor_id is None]
        no_room = set()
        placed: dict[int, int] = {}
        # A VM booting from a local volume goes where the volume is (its job's ``host``).
        for job, instance in (row for row in new if "host" in row[0].args):
            host = job.args["host"]
            if scheduler.claim(session, host, instance.vcpus, instance.memory_mib):
                instance.hypervisor_id = placed[instance.id] = host
            else:
                plan.decide(job, "failed", f"no capacity on hypervisor {host}, where its local boot volume lives: it "
                                           f"must be up, open to new VMs and have room for {instance.vcpus} vCPU and "
                                           f"{instance.memory_mib} MiB")
                no_room.add(job.id)
        new = [(job, instance) for job, instance in new if "host" not in job.args]
        demands = [scheduler.Demand(i.vcpus, i.memory_mib, i.arch) for _, i in new]
        for (job, instance), demand, host in zip(new, demands, placer.place_many(demands)):
            if host is None:
                plan.decide(job, "failed", placer.no_capacity(demand))
                no_room.add(job.id)
            else:
                placed[instance.id] = host
            instance.hypervisor_id = host
        # Their NICs are bound there with the placement: one change per VPC, sent by net jobs.
        follow_up(session, netstate.bind(session, placed))
        # The NICs of what gets a domain (again): one read for the batch.
        nics = vm_nics(session, (i.id for job, i in rows if job.action in WITH_NICS))
        # Their boot volumes; a new one is made by the create (its image's source, its host).
        source = plan.settings.guest_source
        boots = boot_volumes.of_instances(session, (i.id for job, i in rows if job.action in ("create", "recover")),
                                          source.image_source if source is not None else None,
                                          {i.id: i.hypervisor_id for _, i in rows})
        for job, instance in rows:
            if job.id in no_room:
                continue
            boot = boots.get(instance.id)
            if isinstance(boot, str):
                plan.decide(job, "failed", boot)
                continue
            if job.action == "purge":  # not where the instance lives: where the leftover is
                assert job.hypervisor_id is not None
                plan.send(job, "vm.delete", job.hypervisor_id,
                          cpb.VmDeleteRequest(name=job.args["name"], uuid=job.args["uuid"]))
                continue
            if instance.hypervisor_id in lost:
                hv, state = instance.hypervisor_id, lost[instance.hypervisor_id]
                if job.action == "delete":
                    plan.decide(job, "ok", hypervisors.nothing_to_clean(hv, state))
                else:
                    plan.decide(job, "failed", f"{hypervisors.lost_reason(hv, state)}: nothing was sent")
                continue
            if (job.action == "resize" and job.state == JobState.pending and instance.hypervisor_id is not None
                    and not self._claim_resize(session, job, instance)):
                plan.decide(job, "failed", f"no capacity on hypervisor {instance.hypervisor_id} to resize to "
                                           f"{job.args['vcpus']} vCPU and {job.args['memory_mib']} MiB")
                continue
            if instance.hypervisor_id is None:
                # Never placed (its create failed for want of room): nothing exists to act on.
                if job.action == "delete":
                    plan.decide(job, "ok")
                else:
                    plan.decide(job, "failed", "instance was never placed on a hypervisor")
                continue
            guest = target = None
            # Making a new boot volume copies a whole image first (as a volume job would).
            timeout = VOLUME_TIMEOUT_S if boot is not None and boot.HasField("create") else None
            if source is not None and job.action in ("create", "rebuild", "recover"):
                guest = source.guest(session, instance, job.args.get("image_id"), boot_volume=instance.id in boots)
            if job.action == "capture":
                timeout = plan.settings.capture_timeout_s
                if source is not None:
                    target = source.capture_target(job.args["image_id"], job.args["disk_format"],
                                                   plan.settings.capture_timeout_s)
            plan.send(job, OPERATIONS[job.action], instance.hypervisor_id,
                      agent_request(job, instance, guest, target, nics.get(instance.id, ()), boot),
                      timeout)

    @staticmethod
    def _claim_resize(session: Session, job: Job, instance: Instance) -> bool:
        """Claim the growth of a resize on the instance's host (a shrink always fits)."""
        dv = max(0, job.args["vcpus"] - instance.vcpus)
        dm = max(0, job.args["memory_mib"] - instance.memory_mib)
        assert instance.hypervisor_id is not None
        # Not a new VM: a disabled host (closed to new VMs) still lets its own VMs grow.
        if (dv or dm) and not scheduler.claim(session, instance.hypervisor_id, dv, dm, new_vm=False):
            return False
        job.args = job.args | {"claimed_vcpus": dv, "claimed_memory_mib": dm}
        return True

    def settle(self, session: Session, done: list[tuple[Job, Outcome]]) -> None:
        instances = {i.id: i for i in session.scalars(select(Instance).where(
            Instance.id.in_({job.subject_id for job, _ in done})))}
        releases = scheduler.Releases()
        for job, outcome in done:
            instance = instances.get(job.subject_id)
            if instance is not None:
                settle_instance(job, instance, outcome, releases, session)
        releases.apply(session)  # one UPDATE per host, not per VM
        boot_volumes.created(session, [(job.subject_id, job.id, outcome.ok, outcome.reason) for job, outcome in done
                                       if job.action == "create"])
        # Deleted VMs' NICs go after the claims (hosts' rows locked before VPCs', as when placing).
        release_ports(session, [job.subject_id for job, outcome in done
                                if outcome.ok and job.action == "delete"])
        for job, outcome in done:
            # A detached NIC's port is kept, bound to nothing; a failed attach's goes back as it was
            # (deleted when the attach made it).
            if (job.action == "detach_nic" and outcome.ok) or (job.action == "attach_nic" and not outcome.ok):
                port = session.get(Port, job.args["port_id"])
                if port is not None and port.instance_id == job.subject_id:
                    follow_up(session, netstate.unbind_port(session, port, job.action == "attach_nic"
                                                            and job.args.get("made", False)))


def release_ports(session: Session, instance_ids: list[int]) -> None:
    """Delete the ports of deleted instances and tell their VPCs' hypervisors (follow-up net jobs);
    their volume attachments go too (the domain took its disks with it; the volumes stay)."""
    follow_up(session, netstate.release(session, instance_ids))
    release_attachments(session, instance_ids)


def settle_now(session: Session, job: Job, instance: Instance, outcome: Outcome,
               releases: scheduler.Releases) -> None:
    """End ``job`` where it was made, without the engine (a delete on a host that is gone); the
    net jobs that its ports' removal makes are follow-ups of ``session``."""
    end(job, outcome)
    settle_instance(job, instance, outcome, releases, None)
    if outcome.ok and job.action == "delete":
        release_ports(session, [instance.id])


def settle_instance(job: Job, instance: Instance, outcome: Outcome, releases: scheduler.Releases,
                    session: Session | None) -> None:
    """Move ``instance`` to what ``job``'s outcome means, claims given back to ``releases``
    (``session``: to mark a failed capture's image)."""
    if instance.job_id == job.id:
        instance.job_id = None
    if job.action == "purge":
        return  # the leftover's instance lives elsewhere, or is deleted: nothing of it changes
    give_back = releases.add
    if outcome.ok:
        _succeeded(job, instance, outcome.result, releases)
        return
    instance.status_reason = f"{job.action} failed: {outcome.reason}"
    if job.action in ("create", "delete", "recover"):
        instance.status = "error"
    if job.action == "capture" and session is not None:
        image = session.get(Image, job.args["image_id"])
        if image is not None and image.status == "saving":  # (None: deleted meanwhile)
            image.status = "error"
    if job.action == "resize" and instance.hypervisor_id is not None:
        give_back(instance.hypervisor_id, job.args.get("claimed_vcpus", 0), job.args.get("claimed_memory_mib", 0))


def _succeeded(job: Job, instance: Instance, result: Message | None, releases: scheduler.Releases) -> None:
    instance.status_reason = None
    if job.action in NIC_ACTIONS:
        return
    if job.action == "delete":
        if instance.hypervisor_id is not None and instance.status != "deleted":
            releases.add(instance.hypervisor_id, instance.vcpus, instance.memory_mib)
        instance.status = "deleted"
        return
    if job.action == "resize":
        # The growth was claimed at dispatch; a shrink gives room back now.
        if instance.hypervisor_id is not None:
            releases.add(instance.hypervisor_id, max(0, instance.vcpus - job.args["vcpus"]),
                         max(0, instance.memory_mib - job.args["memory_mib"]))
        instance.vcpus, instance.memory_mib = job.args["vcpus"], job.args["memory_mib"]
        instance.disk_gib = job.args.get("disk_gib", instance.disk_gib)
        instance.flavor_id = job.args.get("flavor_id", instance.flavor_id)
    if job.action == "rebuild":
        instance.image_id = job.args["image_id"]
    if job.action == "recover":
        # A stopped instance stays stopped: its stop job, queued behind this one, stops the domain.
        instance.status = "stopped" if job.args.get("power") == "stopped" else "running"
    elif job.action == "rebuild":
        # The VM keeps its power state through a rebuild: what it is now, its result says.
        running = isinstance(result, cpb.VmRebuildResult) and result.vm.state == "running"
        instance.status = "running" if running else "stopped"
    else:
        instance.status = SETTLED[job.action]
