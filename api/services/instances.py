"""Instances: what the API does with them, apart from HTTP (hypervisors: hypervisors.py; jobs: jobs.py).

Tenant-scoped through ``crud`` (another organisation's id is NotFound); who may do what is
api/policy.py's, decided before the service runs.

Every change to an instance writes its desired state and a ``pending`` job in one
transaction (ARCHITECTURE.md "Lifecycle of a job"); the caller hands the committed job
ids to the job engine (api/jobs/). One job acts on an instance at a time: an action on an instance
whose job has not ended is a Conflict, which serialises a VM's commands at the API.

A VM on a gone or removed hypervisor cannot be reached: its delete ends here, in the same
transaction, as a job that succeeded with a note (nothing is sent, nothing was left to clean),
and every other action is a Conflict naming the hypervisor.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import RowMapping, bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cloudland.client import new_job_id
from cloudland.errors import Conflict, InvalidRequest, NotFound
from cloudland_api.jobs import Outcome, follow_up, follow_ups
from cloudland_api.jobs import vm as vm_jobs
from cloudland_api.models import INSTANCE, Image, Instance, Job, JobState, Port, PortSecurityGroup, VolumeAttachment
from cloudland_api.models.projects import default_project_id
from cloudland_api.schemas import CaptureRequest, InstanceCreate, InstancePublic, NicAttach
from cloudland_api.services import boot_volumes, crud, hypervisors, netstate, networks, quotas, scheduler, secgroups
from cloudland_api.services.flavors import get_flavor
from cloudland_api.services.identity import Caller
from cloudland_api.services.ssh_keys import get_ssh_key
from cloudland_api.settings import ApiSettings

log = logging.getLogger(__name__)

NAME_MAX = 64
# Which statuses an action may start from (``error`` allows everything: it is how one recovers).
ALLOWED_FROM = {
    "start": {"stopped", "running", "error"},
    "stop": {"running", "stopped", "error"},
    "reboot": {"running", "stopped", "error"},
    "resize": {"stopped", "error"},
    "rebuild": {"running", "stopped", "error"},
    "delete": {"running", "stopped", "error"},
    "capture": {"stopped"},  # a running guest's disk is changing under the copy (and QEMU locks it)
    "attach_nic": {"running", "stopped"},
    "detach_nic": {"running", "stopped"},
}


@dataclass
class Accepted:
    """What a request started: the instances it touched and one job per instance, in one batch."""

    batch: str
    instances: list[Instance]
    jobs: list[Job]
    follow: list[str] = field(default_factory=list)  # jobs made alongside (net jobs of deleted VMs' ports)

    @property
    def job_ids(self) -> list[str]:
        """The jobs for the engine: those not already ended here (deletes on lost hosts), and those
        made alongside."""
        return to_send(self.jobs) + self.follow


def to_send(jobs: Sequence[Job], session: Session | None = None) -> list[str]:
    """The ids of ``jobs`` that the engine has to send (still ``pending``), and of the jobs made
    alongside them in ``session`` (kinds.follow_up), once it is committed."""
    return [job.id for job in jobs if job.state == JobState.pending] + (follow_ups(session) if session else [])


# -- references -----------------------------------------------------------------------------


def resolve_image(session: Session, caller: Caller, ref: int | str) -> Image:
    """An active image of the caller's organisation by id or name; Conflict while it has no data."""
    image = crud.get(session, Image, caller, ref, "image")
    if image.status != "active":
        raise Conflict(f"image {image.name!r} ({image.id}) is {image.status}: upload its file before booting from it")
    return image


# -- instances ------------------------------------------------------------------------------


def instance_names(name: str, count: int) -> list[str]:
    """``name`` for one VM; ``name-1`` .. ``name-N`` for more. InvalidRequest if too long."""
    names = [name] if count == 1 else [f"{name}-{i}" for i in range(1, count + 1)]
    if len(names[-1]) > NAME_MAX:
        raise InvalidRequest(f"name {names[-1]!r} would be longer than {NAME_MAX} characters; use a shorter name")
    return names


def _new_job(caller: Caller, batch: str, action: str, instance: Instance, args: dict[str, Any]) -> Job:
    """A VM job on ``instance`` (which must have its id: flushed)."""
    job = Job(id=new_job_id(), **crud.owner(caller), user_id=caller.user_id, batch=batch, kind="vm", action=action,
              subject_type=INSTANCE, subject_id=instance.id, hypervisor_id=instance.hypervisor_id, args=args,
              state=JobState.pending, attempts=0)
    return job


def create_instances(session: Session, caller: Caller, spec: InstanceCreate, settings: ApiSettings) -> Accepted:
    """``spec.count`` new instances and their create jobs, committed together (``settings``: for
    ``new_boot_volume``, the volume types and where images are)."""
    flavor = get_flavor(session, caller, spec.flavor)
    image = resolve_image(session, caller, spec.image) if spec.image is not None else None
    # Or its root disk is a volume (locked now; attached as vda once the instance has its id).
    boot = boot_volumes.reserve(session, caller, spec.boot_volume) if spec.boot_volume is not None else None
    key = get_ssh_key(session, caller, spec.ssh_key) if spec.ssh_key is not None else None
    # Before the subnets' locks (the default group may be made and committed here).
    groups = sorted({secgroups.get_group(session, caller, ref).id for ref in spec.security_groups})
    # Locked for the addresses below. Without ``networks`` (not even []): the organisation's
    # default subnet, if it has one (the all-in-one cloud's, api/settings.py default_network).
    subnets = (networks.resolve_networks(session, caller, spec.networks) if "networks" in spec.model_fields_set
               else networks.default_subnets(session, caller))
    names = instance_names(spec.name, spec.count)
    # Or each VM boots from a new volume made from the image: checked and charged now.
    new_boot = (boot_volumes.plan_new(session, caller, image, spec.new_boot_volume, names, settings)
                if spec.new_boot_volume is not None and image is not None else None)
    # Counted under the organisation's lock, committed with the rows below (services/quotas.py).
    quotas.charge(session, caller, instances=spec.count, vcpus=flavor.vcpus * spec.count,
                  memory_mib=flavor.memory_mib * spec.count, ports=len(subnets) * spec.count)
    project = caller.project_id if caller.project_id is not None else default_project_id(session.connection(),
                                                                                          caller.org_id)
    taken = session.scalars(
        select(Instance.name).where(Instance.project_id == project, Instance.status != "deleted",
                                    Instance.name.in_(names)).limit(5)
    ).all()
    if taken:
        raise Conflict(f"instance name {sorted(taken)[0]!r} is already used in this project"
                       + (f" (and {len(taken) - 1} more)" if len(taken) > 1 else ""))
    batch = new_job_id()
    if image is not None:
        arch, disk_gib, args = image.arch, new_boot.size_gib if new_boot else flavor.disk_gib, {}
    else:
        assert boot is not None  # the schema asks for exactly one of image and boot_volume
        arch, disk_gib, args = boot_volumes.arch_of(session, boot), boot.size_gib, boot_volumes.create_args(boot)
    instances = [Instance(**crud.owner(caller), name=name, uuid=str(uuid.uuid4()), flavor_id=flavor.id,
                          image_id=image.id if image else None, ssh_key_id=key.id if key else None,
                          user_data=spec.user_data, vcpus=flavor.vcpus, memory_mib=flavor.memory_mib,
                          disk_gib=disk_gib, arch=arch, status="building")
                 for name in names]
    session.add_all(instances)
    try:
        session.flush()  # the instances' ids, for their jobs' subject; one INSERT for all
        # Their NICs: a port with an address on each subnet, or Conflict (subnet full) for all.
        ports = networks.instance_ports(session, subnets, instances)
        session.add_all(PortSecurityGroup(port_id=port.id, group_id=group) for port in ports for group in groups)
        if boot is not None:
            boot_volumes.attach_root(session, caller, boot, instances[0], spec.delete_on_termination)
        jobs = [_new_job(caller, batch, "create", instance, dict(args)) for instance in instances]
        for instance, job in zip(instances, jobs):
            instance.job_id = job.id
        session.add_all(jobs)
        if new_boot is not None:
            boot_volumes.make_new(session, caller, new_boot, instances, jobs, spec.delete_on_termination)
        session.commit()
    except IntegrityError as exc:
        # Two creates raced past the check above; the partial unique index decided.
        session.rollback()
        raise Conflict(f"an instance name of {names[0]!r}..{names[-1]!r} was taken meanwhile; try again") from exc
    log.info("event=instances_created org_id=%d batch=%s count=%d user_id=%d", caller.org_id, batch,
             len(instances), caller.user_id)
    return Accepted(batch, instances, jobs)


def glob_to_like(pattern: str) -> str:
    """A shell glob (``web-*``, ``db-?``) as a LIKE pattern with ``\\`` as the escape."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def list_instance_rows(
    session: Session, caller: Caller, limit: int, after: str | None = None, status: str | None = None,
    name: str | None = None, hypervisor: int | None = None,
) -> tuple[list[RowMapping], str | None]:
    """One page of instances by id after the cursor ``after`` (``crud.page``'s), and the next
    page's cursor, as rows of InstancePublic's columns (crud "hot reads as rows"). Deleted
    instances are left out unless ``status`` is ``deleted``; ``name`` is a glob (case-sensitive)."""
    dialect = session.get_bind().dialect.name
    table = Instance.__table__

    def where() -> list[Any]:
        conditions = [table.c.status == bindparam("status") if status else table.c.status != "deleted"]
        if name:
            # SQLite's LIKE ignores ASCII case (PostgreSQL's does not); GLOB is its case-sensitive
            # glob. Only '[' needs escaping there ("[[]" is a class holding just '[').
            conditions.append(table.c.name.op("GLOB")(bindparam("name")) if dialect == "sqlite"
                              else table.c.name.like(bindparam("name"), escape="\\"))
        if hypervisor is not None:
            conditions.append(table.c.hypervisor_id == bindparam("hypervisor"))
        return conditions

    pattern = None if not name else name.replace("[", "[[]") if dialect == "sqlite" else glob_to_like(name)
    return crud.page_rows(session, Instance, InstancePublic, caller, limit, after,
                          (dialect, bool(status), bool(name), hypervisor is not None), where,
                          {"status": status, "name": pattern, "hypervisor": hypervisor})


def instance_row(session: Session, caller: Caller, instance_id: int) -> RowMapping:
    """``get_instance`` (not locked) as a row of InstancePublic's columns, for the read route."""
    shape = ("instances.get", caller.project_id is not None)
    query = crud.statement(shape, lambda: select(*crud.columns_of(Instance, InstancePublic)).where(
        Instance.__table__.c.id == bindparam("id"), *crud.scoped_where(Instance, shape[1])))
    found = crud.rows(session, query, crud.scope_params(caller) | {"id": instance_id})
    if not found:
        raise NotFound(f"instance {instance_id!r} not found")
    return found[0]


def get_instance(session: Session, caller: Caller, instance_id: int, *, lock: bool = False) -> Instance:
    """The caller's organisation's instance ``instance_id`` (deleted ones too), or NotFound.

    ``lock``: for a change. Two requests acting on one instance at once must not both see it
    idle: on PostgreSQL the second waits here for the first to commit, then reads its job_id
    (SQLite's write transactions are serial anyway, and it ignores FOR UPDATE).
    """
    return crud.get(session, Instance, caller, instance_id, "instance", lock=lock)


def _lost_host(session: Session, instance: Instance) -> str | None:
    """``gone`` or ``removed`` when the instance's hypervisor is; None otherwise."""
    return hypervisors.lost_hosts(session, [instance.hypervisor_id]).get(instance.hypervisor_id)


def _check_can(instance: Instance, action: str, lost: str | None) -> None:
    """Conflict unless ``action`` may start now; ``lost``: the state of the instance's gone or
    removed hypervisor (from ``_lost_host``), where only a delete is possible."""
    if instance.job_id is not None:
        raise Conflict(f"instance {instance.id} ({instance.name}) is busy with job {instance.job_id}; "
                       f"wait for it (cloudland job watch {instance.job_id})")
    if lost is not None and action != "delete":
        assert instance.hypervisor_id is not None
        raise hypervisors.unreachable(f"{action} instance {instance.id} ({instance.name})", instance.hypervisor_id,
                                      lost)
    if instance.status not in ALLOWED_FROM[action]:
        hint = " stop it first" if action in ("resize", "capture") else ""
        raise Conflict(f"instance {instance.id} ({instance.name}) is {instance.status}: cannot {action} it;{hint}"
                       .rstrip(";"))


def _start_job(session: Session, instance: Instance, job: Job, lost: str | None = None,
               releases: scheduler.Releases | None = None) -> None:
    """Make ``job`` the instance's one job; a delete on a lost host (``lost``) ends at once."""
    session.add(job)
    instance.job_id = job.id
    if job.action == "delete":
        instance.status = "deleting"
        if lost is not None:
            # No agent can be reached there, and no domain of it can be left to clean: the record
            # ends now, as the engine's writer would end it, and the job keeps the history.
            assert instance.hypervisor_id is not None
            note = hypervisors.nothing_to_clean(instance.hypervisor_id, lost)
            own = releases or scheduler.Releases()
            vm_jobs.settle_now(session, job, instance, Outcome(job.id, "ok", note), own)
            if releases is None:
                own.apply(session)


def act(session: Session, caller: Caller, instance_id: int, action: str, args: dict[str, Any]) -> Job:
    """One job of ``action`` (start, stop, reboot, delete) on one instance, committed."""
    instance = get_instance(session, caller, instance_id, lock=True)
    lost = _lost_host(session, instance)
    _check_can(instance, action, lost)
    job = _new_job(caller, new_job_id(), action, instance, args)
    _start_job(session, instance, job, lost)
    session.commit()
    log.info("event=job_created job=%s action=%s instance=%d org_id=%d", job.id, action, instance.id, caller.org_id)
    return job


def resize(session: Session, caller: Caller, instance_id: int, flavor_ref: int | str) -> Job:
    """A resize job to ``flavor_ref``'s size; the instance must be stopped."""
    instance = get_instance(session, caller, instance_id, lock=True)
    flavor = get_flavor(session, caller, flavor_ref)
    boot_volumes.refuse(session, instance, "resized", "its domain is redefined from a record that does not keep a "
                                                      "volume's disk (not in this slice)")
    _check_can(instance, "resize", _lost_host(session, instance))
    if instance.hypervisor_id is None:
        # An ``error`` instance whose create found no room: there is no host to claim the new size on
        # (the engine's resize claim needs one), and nothing to resize.
        raise Conflict(f"instance {instance.id} ({instance.name}) was never placed on a hypervisor: "
                       "delete it and create it again")
    # A resize redefines the domain from its record, which knows a volume's disk only as a file
    # (not its attachment's alias and serial, nor an rbd source): not with volumes, in this slice.
    attached = session.scalars(select(VolumeAttachment.volume_id).where(VolumeAttachment.instance_id == instance.id)
                               .order_by(VolumeAttachment.volume_id)).all()
    if attached:
        raise Conflict(f"instance {instance.id} ({instance.name}) has volumes {', '.join(map(str, attached))} "
                       "attached: detach them before a resize")
    quotas.charge(session, caller, vcpus=flavor.vcpus - instance.vcpus,
                  memory_mib=flavor.memory_mib - instance.memory_mib)  # a resize's growth
    return act(session, caller, instance.id, "resize",
               {"vcpus": flavor.vcpus, "memory_mib": flavor.memory_mib, "disk_gib": flavor.disk_gib,
                "flavor_id": flavor.id})


def rebuild(session: Session, caller: Caller, instance_id: int, image_ref: int | str) -> Job:
    """A rebuild job from ``image_ref`` (its architecture must match the instance's host)."""
    instance = get_instance(session, caller, instance_id, lock=True)
    image = resolve_image(session, caller, image_ref)
    boot_volumes.refuse(session, instance, "rebuilt", "make a volume from the image and boot a new VM from it")
    if image.arch != instance.arch:
        raise InvalidRequest(f"image {image.name!r} is for {image.arch}; instance {instance.id} runs on {instance.arch}")
    return act(session, caller, instance.id, "rebuild", {"image_id": image.id})


def capture(session: Session, caller: Caller, instance_id: int, spec: CaptureRequest) -> tuple[Image, Job]:
    """A new image ``spec.name`` (``saving``) and the job that fills it from the stopped instance's
    disk, committed together. The hypervisor uploads the bytes itself (``PUT /images/{id}/upload``
    with the job's upload token); the image is ``active`` once they are in, ``error`` if the job fails."""
    instance = get_instance(session, caller, instance_id, lock=True)
    boot_volumes.refuse(session, instance, "captured", "snapshot its volume instead")
    _check_can(instance, "capture", _lost_host(session, instance))
    if instance.hypervisor_id is None:
        raise Conflict(f"instance {instance.id} ({instance.name}) was never placed on a hypervisor: it has no disk")
    image = crud.insert_named(session, Image(**crud.owner(caller), name=spec.name, arch=instance.arch,
                                                disk_format=spec.disk_format, status="saving", size_bytes=0),
                                 "image", commit=False)  # committed below with its job
    job = _new_job(caller, new_job_id(), "capture", instance, {"image_id": image.id, "disk_format": spec.disk_format})
    _start_job(session, instance, job)
    session.commit()
    log.info("event=capture_created job=%s instance=%d image_id=%d org_id=%d", job.id, instance.id, image.id,
             caller.org_id)
    return image, job


def attach_nic(session: Session, caller: Caller, instance_id: int, body: NicAttach) -> Job:
    """An ``attach_nic`` job giving the instance its next NIC (``networks.attach_port``), whose
    port is bound to the instance's hypervisor now (its VPC's net jobs follow up), committed."""
    instance = _placed(session, caller, instance_id, "attach_nic")
    assert instance.hypervisor_id is not None
    port, made = networks.attach_port(session, caller, instance, body.network, body.port)
    follow_up(session, netstate.bind_port(session, port, instance.hypervisor_id, caller.user_id))
    job = _new_job(caller, new_job_id(), "attach_nic", instance, {"port_id": port.id, "made": made})
    _start_job(session, instance, job)
    session.commit()
    log.info("event=nic_attach job=%s instance=%d port=%d org_id=%d", job.id, instance.id, port.id, caller.org_id)
    return job


def detach_nic(session: Session, caller: Caller, instance_id: int, port_id: int) -> Job:
    """A ``detach_nic`` job taking port ``port_id`` off the instance; the port is kept, bound to
    nothing, once it succeeds. The primary NIC (device 0) stays: Conflict."""
    instance = _placed(session, caller, instance_id, "detach_nic")
    port = crud.get(session, Port, caller, port_id, "port")
    if port.instance_id != instance.id:
        raise Conflict(f"port {port.id} is not a NIC of instance {instance.id} ({instance.name})")
    if port.device_index == 0:
        raise Conflict(f"port {port.id} is instance {instance.id}'s primary NIC (device 0): it cannot be detached; "
                       "delete the instance, or attach another NIC and use that")
    job = _new_job(caller, new_job_id(), "detach_nic", instance, {"port_id": port.id, "mac": port.mac})
    _start_job(session, instance, job)
    session.commit()
    log.info("event=nic_detach job=%s instance=%d port=%d org_id=%d", job.id, instance.id, port.id, caller.org_id)
    return job


def _placed(session: Session, caller: Caller, instance_id: int, action: str) -> Instance:
    """The instance, locked, idle, in a state ``action`` may start from, and placed on a hypervisor."""
    instance = get_instance(session, caller, instance_id, lock=True)
    _check_can(instance, action, _lost_host(session, instance))
    if instance.hypervisor_id is None:
        raise Conflict(f"instance {instance.id} ({instance.name}) was never placed on a hypervisor")
    return instance


def act_many(session: Session, caller: Caller, action: str, ids: Sequence[int], force: bool) -> Accepted:
    """``action`` on every instance of ``ids``, all or none, in one batch."""
    wanted = sorted(set(ids))
    # Locked in id order, so two batches over the same instances cannot deadlock (see get_instance).
    found = {i.id: i for i in session.scalars(
        crud.scoped(Instance, caller).where(Instance.id.in_(wanted))
        .order_by(Instance.id).with_for_update())}
    missing = [i for i in wanted if i not in found]
    if missing:
        raise NotFound(f"instance {missing[0]} not found" + (f" (and {len(missing) - 1} more)" if len(missing) > 1
                                                              else ""))
    lost = hypervisors.lost_hosts(session, (i.hypervisor_id for i in found.values()))
    for instance in found.values():
        _check_can(instance, action, lost.get(instance.hypervisor_id))
    batch = new_job_id()
    args = {"force": force} if action in ("stop", "reboot") else {}
    jobs = []
    releases = scheduler.Releases()  # deletes on lost hosts: one UPDATE per host, not per VM
    for instance in found.values():
        job = _new_job(caller, batch, action, instance, dict(args))
        _start_job(session, instance, job, lost.get(instance.hypervisor_id), releases)
        jobs.append(job)
    releases.apply(session)
    session.commit()
    log.info("event=batch_action action=%s batch=%s count=%d org_id=%d", action, batch, len(jobs), caller.org_id)
    return Accepted(batch, list(found.values()), jobs, follow_ups(session))


