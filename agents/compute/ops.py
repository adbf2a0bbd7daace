"""The ``vm.*`` agent operations: the compute driver (agents/compute/driver.py) behind the registry.

None is inline: libvirt calls can block (a graceful stop waits for the guest), so
they run on worker threads, where the driver's per-VM locks serialise one VM's
commands and let different VMs run concurrently.

Requests and results are the messages of proto/v1/compute.proto, whose comments are the
contract; the ranges are DomainSpec's (InvalidRequest names the field). Every VM operation is
idempotent on the VM, hence on its job id (proto/README.md §3).
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import os
import platform
import re
from pathlib import Path
from typing import Any

from cloudland.errors import DriverError, InvalidRequest, VMNotFound, VMStateError
from cloudland_agents.compute import guests, nics
from cloudland_agents.compute.driver import Compute, Disk, DomainSpec, LibvirtCompute, Nic, VMInfo
from cloudland_agents.hypervisor import Hypervisor, PerHypervisor
from cloudland_agents.images.cache import CAPTURE_TIMEOUT_S
from cloudland_agents.images.source import ImageSource, ImageTarget
from cloudland_agents.network.ops import network_for
from cloudland_agents.ops import Context, operation
from cloudland_agents.storage.ops import storage_for
from cloudland_proto.v1 import compute_pb2 as cpb

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
VIRTIO_TARGETS = tuple(f"vd{letter}" for letter in "abcdefghijklmnopqrstuvwxyz")
CDROM_TARGETS = ("hdc", "hdd", "hda", "hdb")  # hdc first: the secondary IDE bus, as virt-install does

# The compute driver of each hypervisor; ``driver_for.set`` installs another (a FakeCompute) in tests.
driver_for: PerHypervisor[Compute] = PerHypervisor(lambda hv: LibvirtCompute(hv.conn, hv.id))


def use_driver(hypervisor: Hypervisor, driver: Compute) -> None:
    """Install ``driver`` (e.g. a FakeCompute) for ``hypervisor``: for tests."""
    driver_for.set(hypervisor, driver)


# -- messages to the driver's words and back ------------------------------------------------


def spec_of(spec: cpb.DomainSpec, default_domain_type: str, resolved: tuple[Nic, ...] | None = None) -> DomainSpec:
    """A validated DomainSpec from its message (``resolved``: its NICs with this hypervisor's
    names, agents/compute/nics.py); InvalidRequest names the bad field."""
    for key in ("name", "uuid"):  # DomainSpec takes an empty one for unset
        if not getattr(spec, key):
            raise InvalidRequest(f"spec.{key} is required")
    # A disk without a target gets the first free one of its bus: vda, vdb...; hdc, hdd...
    taken = {d.target for d in spec.disks if d.target}
    disks = []
    for d in spec.disks:
        device = d.device or "disk"
        target = d.target
        if not target:  # none free: the last candidate again, which DomainSpec refuses as a duplicate
            candidates = CDROM_TARGETS if device == "cdrom" else VIRTIO_TARGETS
            target = next((t for t in candidates if t not in taken), candidates[-1])
            taken.add(target)
        disks.append(Disk(d.path, d.format or ("raw" if device == "cdrom" else "qcow2"), target, device))
    return DomainSpec(
        name=spec.name, uuid=spec.uuid, vcpus=spec.vcpus, memory_mib=spec.memory_mib,
        arch=spec.arch or "x86_64", domain_type=spec.domain_type or default_domain_type,
        disks=tuple(disks), metadata=dict(spec.metadata),
        nics=resolved if resolved is not None else tuple(Nic(n.bridge, n.mac, n.target, n.mtu) for n in spec.nics),
        kernel=spec.kernel, initrd=spec.initrd, cmdline=spec.cmdline, console_log=spec.console_log,
        vnc_listen=spec.vnc_listen,
    )


_RECORD_FIELDS = frozenset(cpb.VmRecord.DESCRIPTOR.fields_by_name)


def record_of(info: VMInfo | dict[str, Any]) -> cpb.VmRecord:
    """A driver's record (``VMInfo``) as its message; keys that are not the record's are left out.

    Built by the constructor, not json_format.ParseDict: every vm.* reply carries one, and the
    generic parser was a tenth of a leaf's CPU per vm.create (issue 15). A key of a disk or NIC
    that its message lacks is still refused (ValueError), as ParseDict refused it."""
    values = {k: v for k, v in info.items() if k in _RECORD_FIELDS and v is not None}
    disks = [cpb.Disk(**disk) for disk in values.pop("disks", ())]
    nics = [cpb.Nic(**nic) for nic in values.pop("nics", ())]
    return cpb.VmRecord(**values, disks=disks, nics=nics)


KVM_GET_API_VERSION = 0xAE00  # _IO(KVMIO, 0x00) in <linux/kvm.h>
KVM_API_VERSION = 12  # the stable API, unchanged since Linux 2.6.22


@functools.cache
def kvm_usable(device: str = "/dev/kvm", cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this host can run ordinary guests under KVM (else they run under TCG).

    /dev/kvm must open read-write (as QEMU opens it) and answer KVM_GET_API_VERSION.
    On x86 the CPU must also have VMX or SVM: a /dev/kvm without them (kvm_pvm inside
    a Firecracker VM, where this project is developed) answers the ioctl, even creates
    a VM, and libvirt's domain capabilities list kvm, yet a stock guest kernel hangs
    there before its first console line. libvirt does not tell, so we look ourselves.
    """
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if fcntl.ioctl(fd, KVM_GET_API_VERSION) != KVM_API_VERSION:
            return False
    except OSError:
        return False
    finally:
        os.close(fd)
    if platform.machine() not in ("x86_64", "i686", "i386"):
        return True
    try:
        return bool(hardware_virtualization(Path(cpuinfo).read_text()))
    except OSError:
        return False


def hardware_virtualization(cpuinfo: str) -> set[str]:
    """The x86 virtualisation extensions (vmx: Intel VT-x, svm: AMD-V) /proc/cpuinfo's flags list."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return {"vmx", "svm"} & set(value.split())
    return set()


def _default_domain_type(ctx: Context) -> str:
    # The agent runs on its hypervisor (qemu:///system is local), so the local probe decides.
    if ctx.hypervisor.uri.startswith("test:"):
        return "test"
    return "kvm" if kvm_usable() else "qemu"


def _timeout(ctx: Context, timeout_s: float | None) -> float:
    """The graceful timeout of stop and reboot (default 60 s), capped by the job's deadline."""
    timeout = 60.0 if timeout_s is None else timeout_s
    if not 0 <= timeout <= 3600:
        raise InvalidRequest(f"timeout_s must be in [0, 3600], got {timeout:g}")
    # Leave a second of the deadline for the destroy (and start) and the reply.
    return max(0.0, min(float(timeout), ctx.remaining() - 1.0))


def _name(request: Any) -> str:
    """The VM the request names; InvalidRequest when it names none."""
    if not request.name:
        raise InvalidRequest("name is required")
    return str(request.name)


def _optional_timeout(request: cpb.VmStopRequest | cpb.VmRebootRequest) -> float | None:
    return request.timeout_s if request.HasField("timeout_s") else None


# -- the operations (contracts: proto/v1/compute.proto) ------------------------------------


@operation("vm.create")
def vm_create(ctx: Context, request: cpb.VmCreateRequest) -> cpb.VmCreateResult:
    """Define and start a VM from a spec. Idempotent: if a VM with this uuid and name exists it
    is left as is and reported with ``created`` false. A name or uuid held by another VM FAILS."""
    # The guest's own disk: a create that defines it again (recover) boots from what it has.
    spec, files, resolved = _guest_spec(ctx, request.spec, request.guest if request.HasField("guest") else None,
                                        None)
    # Its tenant bridges come from its VPC's net.sync, sent beside this create (nics.py).
    nics.await_bridges(ctx.hypervisor, spec.name, resolved.tenant, ctx.remaining() - 2.0, ctx.job_id)
    root = ()
    if request.HasField("boot_volume"):  # its root disk (vda) is a volume, in the definition from the start
        boot = request.boot_volume
        storage = storage_for(ctx.hypervisor)
        if boot.HasField("create"):  # a new volume, from an image: made first (a replay finds it made)
            new = boot.create
            storage.create(boot.volume, new.size_bytes, new.image if new.HasField("image") else None)
        root = (storage.boot_disk(boot.volume, boot.attachment_id),)
    info = driver_for(ctx.hypervisor).create(spec, root)
    _play_nics(ctx, spec.name, resolved.tenant)
    return cpb.VmCreateResult(vm=record_of(info), created=bool(info["created"]),
                              image_downloaded=files is not None and files.downloaded)


def _play_nics(ctx: Context, vm: str, tenant: tuple[Nic, ...]) -> None:
    """On a simulated hypervisor with the kernel's data plane, test guests play the VM's tenant NICs."""
    if nics.plays_guests(ctx.hypervisor):
        nics.guests_for(ctx.hypervisor).plug(vm, tenant)


def _guest_spec(ctx: Context, message: cpb.DomainSpec, guest: cpb.Guest | None,
                disk_name: str | None) -> tuple[DomainSpec, guests.GuestFiles | None, nics.Resolved]:
    """The spec of ``message`` with its NICs named here, and, on a real hypervisor given
    ``guest``, the guest's files with their disks and console log added to it, and a VNC
    display on the hypervisor's ``vnc_listen`` unless the spec names one. Simulated hypervisors
    get no files (None)."""
    resolved = nics.resolve(ctx.hypervisor, message.nics)
    spec = spec_of(message, _default_domain_type(ctx), resolved.nics)
    if guest is None or ctx.hypervisor.uri.startswith("test:"):
        return spec, None, resolved
    files = _prepare_guest(ctx, spec, guest, disk_name, resolved.configs)
    return dataclasses.replace(spec, disks=spec.disks + files.disks, console_log=str(files.console_log),
                               vnc_listen=spec.vnc_listen or ctx.hypervisor.vnc_listen), files, resolved


def _prepare_guest(ctx: Context, spec: DomainSpec, guest: cpb.Guest, disk_name: str | None,
                   configs: tuple[guests.NicConfig, ...]) -> guests.GuestFiles:
    """The disk and config drive of a real guest (ImageSource validates the image's fields)."""
    image = guest.image
    source = None  # no image: the guest boots from a volume (vm.create's boot_volume)
    if guest.HasField("image"):
        source = ImageSource(image_id=image.image_id, sha256=image.sha256, size_bytes=image.size_bytes,
                             disk_format=image.disk_format, url=image.url, token=image.token or None)
    return guests.prepare(ctx.hypervisor, spec.uuid, hostname=guest.hostname or spec.name, image=source,
                          disk_gib=guest.disk_gib, ssh_keys=list(guest.ssh_keys),
                          user_data=guest.user_data or None, disk_name=disk_name, nics=configs)


@operation("vm.start")
def vm_start(ctx: Context, request: cpb.VmStartRequest) -> cpb.VmStartResult:
    """Start VM ``name``. Idempotent: a running VM is success."""
    return cpb.VmStartResult(vm=record_of(driver_for(ctx.hypervisor).start(_name(request))))


@operation("vm.stop")
def vm_stop(ctx: Context, request: cpb.VmStopRequest) -> cpb.VmStopResult:
    """Shut VM ``name`` off: ACPI, then destroy after ``timeout_s`` (default 60, capped by the
    deadline); ``force`` destroys at once. Idempotent: a shut-off VM is success."""
    timeout = _timeout(ctx, _optional_timeout(request))
    return cpb.VmStopResult(vm=record_of(driver_for(ctx.hypervisor).stop(_name(request), request.force, timeout)))


@operation("vm.reboot")
def vm_reboot(ctx: Context, request: cpb.VmRebootRequest) -> cpb.VmRebootResult:
    """Reboot VM ``name``: shut down as vm.stop does (``timeout_s``), then start; ``force``
    resets instead. A shut-off VM is started.

    Idempotent in its postcondition (the VM runs), not in effect: a replayed job
    reboots the guest once more, which is harmless for a reboot request.
    """
    timeout = _timeout(ctx, _optional_timeout(request))
    info = driver_for(ctx.hypervisor).reboot(_name(request), request.force, timeout)
    return cpb.VmRebootResult(vm=record_of(info))


@operation("vm.delete")
def vm_delete(ctx: Context, request: cpb.VmDeleteRequest) -> cpb.VmDeleteResult:
    """Destroy and undefine VM ``name``; with ``uuid``, also remove that guest's files (its disk,
    config drive and console log; never the cached image). Idempotent: a missing VM is success
    (``deleted`` false)."""
    if request.uuid and not _UUID.fullmatch(request.uuid):
        raise InvalidRequest(f"uuid must be a uuid, got {request.uuid!r}")
    name = _name(request)
    if nics.plays_guests(ctx.hypervisor):
        # Its test guests go first: held ones, and any its domain names (a file lost to a crash).
        try:
            domain_nics = _tenant_nics(ctx, driver_for(ctx.hypervisor).get(name))
        except VMNotFound:
            domain_nics = ()
        nics.guests_for(ctx.hypervisor).unplug(name, domain_nics)
    done = driver_for(ctx.hypervisor).delete(name)
    result = cpb.VmDeleteResult(name=done["name"], deleted=done["deleted"])
    if request.uuid and not ctx.hypervisor.uri.startswith("test:"):
        result.files_removed = guests.remove(ctx.hypervisor, request.uuid)
    return result


@operation("vm.resize")
def vm_resize(ctx: Context, request: cpb.VmResizeRequest) -> cpb.VmResizeResult:
    """Set ``vcpus`` and ``memory_mib`` of the shut-off VM ``name``; a running VM FAILS.
    Idempotent: resizing to the current size is success."""
    for key in ("vcpus", "memory_mib"):
        if not getattr(request, key):
            raise InvalidRequest(f"{key} is required")
    # The driver validates the new size as a DomainSpec before redefining anything.
    info = driver_for(ctx.hypervisor).resize(_name(request), request.vcpus, request.memory_mib)
    return cpb.VmResizeResult(vm=record_of(info))


@operation("vm.rebuild")
def vm_rebuild(ctx: Context, request: cpb.VmRebuildRequest) -> cpb.VmRebuildResult:
    """Redefine VM ``spec.name`` from a spec with the same ``uuid`` (new disks/image), keeping its
    power state. Idempotent: rebuilding to the current spec again is success."""
    # A fresh disk on the (new) image, named by the job so that a replay finds the same one.
    spec, files, resolved = _guest_spec(ctx, request.spec, request.guest if request.HasField("guest") else None,
                                        f"disk-{ctx.job_id[:32]}.qcow2")
    info = driver_for(ctx.hypervisor).rebuild(spec)  # stops the VM, redefines, restarts it
    _play_nics(ctx, spec.name, resolved.tenant)
    if files is not None:
        guests.remove_other_disks(ctx.hypervisor, spec.uuid, keep=Path(files.disks[0].path))
    return cpb.VmRebuildResult(vm=record_of(info))


@operation("vm.capture")
def vm_capture(ctx: Context, request: cpb.VmCaptureRequest) -> cpb.VmCaptureResult:
    """Copy the shut-off VM ``name``'s first disk, its backing chain flattened, into a new image
    and upload it to the API (``target``). The copy then stays in this hypervisor's image cache
    as the new image's base.

    A running VM FAILS (stop it first), and so does a VM without a disk (every VM of a
    simulated hypervisor). Idempotent: a replay copies and uploads the same bytes again,
    which the API accepts as success.
    """
    name, want = _name(request), request.target
    target = ImageTarget(image_id=want.image_id, disk_format=want.disk_format, url=want.url, token=want.token)
    record = driver_for(ctx.hypervisor).get(name)
    if record["state"] != "shutoff":
        raise VMStateError(ctx.hypervisor.id, f"capture of VM {name!r} needs it shut off, it is {record['state']}; "
                                              "stop it first", ctx.job_id)
    disks = [d for d in record["disks"] if d["device"] == "disk"]
    if not disks:
        simulated = " (a simulated hypervisor keeps no guest disks)" if ctx.hypervisor.uri.startswith("test:") else ""
        raise DriverError(ctx.hypervisor.id, f"VM {name!r} has no disk to capture{simulated}", ctx.job_id)
    cache = guests.cache_for(ctx.hypervisor)
    # In the cache's directory, so that adopting it as a base is a rename; named by the job,
    # so that a replay overwrites its own leftover. Other jobs' leftovers (the agent died
    # mid-capture and the job was never replayed) go once they are older than any capture.
    cache.remove_stale(".capture-*", 2 * CAPTURE_TIMEOUT_S)
    copy = cache.root / f".capture-{ctx.job_id[:32]}.{target.disk_format}"
    size, sha256 = cache.capture(Path(disks[0]["path"]), copy, target.disk_format, disks[0]["format"] or "raw",
                                 timeout_s=max(1.0, min(CAPTURE_TIMEOUT_S, ctx.remaining() - 1.0)))
    try:
        cache.upload(copy, target, sha256)
        cache.adopt(copy, sha256, target.disk_format)
    finally:
        copy.unlink(missing_ok=True)  # adopted (renamed away) on success
    return cpb.VmCaptureResult(image_id=target.image_id, size_bytes=size, sha256=sha256)


@operation("vm.attach_nic")
def vm_attach_nic(ctx: Context, request: cpb.VmAttachNicRequest) -> cpb.VmAttachNicResult:
    """VM ``name`` has NIC ``nic``, live and in its definition (its bridge waited for, its test
    guest made). Idempotent: a NIC with that MAC already there is success (``attached`` false)."""
    name = _name(request)
    if not request.HasField("nic"):
        raise InvalidRequest("nic is required")
    resolved = nics.resolve(ctx.hypervisor, [request.nic])
    nics.await_bridges(ctx.hypervisor, name, resolved.tenant, ctx.remaining() - 2.0, ctx.job_id)
    info, attached = driver_for(ctx.hypervisor).attach_nic(name, resolved.nics[0])
    _play_nics(ctx, name, _tenant_nics(ctx, info))
    return cpb.VmAttachNicResult(vm=record_of(info), attached=attached)


@operation("vm.detach_nic")
def vm_detach_nic(ctx: Context, request: cpb.VmDetachNicRequest) -> cpb.VmDetachNicResult:
    """VM ``name`` has no NIC of ``mac`` (and its test guest is gone). Idempotent: no such NIC is
    success (``detached`` false)."""
    name = _name(request)
    if not request.mac:
        raise InvalidRequest("mac is required")
    info, detached = driver_for(ctx.hypervisor).detach_nic(name, request.mac)
    _play_nics(ctx, name, _tenant_nics(ctx, info))
    return cpb.VmDetachNicResult(vm=record_of(info), detached=detached)


def _tenant_nics(ctx: Context, info: VMInfo) -> tuple[Nic, ...]:
    """The NICs of a VM's record whose host end carries this agent's tap names: its tenant NICs."""
    names = network_for(ctx.hypervisor).names
    return tuple(Nic(**n) for n in info["nics"] if names.is_tap(n["target"]))


@operation("vm.get")
def vm_get(ctx: Context, request: cpb.VmGetRequest) -> cpb.VmGetResult:
    """The record of VM ``name``; a missing VM FAILS with "not found"."""
    return cpb.VmGetResult(vm=record_of(driver_for(ctx.hypervisor).get(_name(request))))


@operation("vm.list")
def vm_list(ctx: Context, request: cpb.VmListRequest) -> cpb.VmListResult:
    """Every VM on the hypervisor with its state: the inventory."""
    return cpb.VmListResult(vms=[record_of(r) for r in driver_for(ctx.hypervisor).list()])
