"""The ``vm.*`` agent operations: the compute driver (agents/compute/driver.py) behind the registry.

None is inline: libvirt calls can block (a graceful stop waits for the guest), so
they run on worker threads, where the driver's per-VM locks serialise one VM's
commands and let different VMs run concurrently.

Arguments arrive as a dict from a protobuf Struct, so numbers are floats: they
are checked to be whole and converted here; ranges are DomainSpec's. Unknown
keys are refused (InvalidRequest naming them) so a misspelt field is not
silently ignored. Payloads are VM records (``VMInfo``); Struct turns their
integers into floats on the way up.

Every VM operation is idempotent on the VM, hence on its job id (proto/README.md §3).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import fcntl
import functools
import os
import platform
import re
from pathlib import Path
from typing import Any

from cloudland.errors import DriverError, InvalidRequest, VMStateError
from cloudland_agents.compute import guests
from cloudland_agents.compute.driver import Compute, Disk, DomainSpec, LibvirtCompute, Nic
from cloudland_agents.hypervisor import Hypervisor, PerHypervisor
from cloudland_agents.images.cache import CAPTURE_TIMEOUT_S
from cloudland_agents.images.source import ImageSource, ImageTarget
from cloudland_agents.ops import Context, Payload, operation

# vm.create's arguments for a real guest's files (agents/compute/guests.py); simulated hosts ignore them.
GUEST_KEYS = {"image", "hostname", "disk_gib", "ssh_keys", "user_data"}
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
SPEC_KEYS = {"name", "uuid", "vcpus", "memory_mib", "arch", "domain_type", "disks", "nics", "metadata",
             "kernel", "initrd", "cmdline", "console_log", "vnc_listen"}
_TEXT_KEYS = ("kernel", "initrd", "cmdline", "console_log", "vnc_listen")  # optional strings of a spec
DISK_KEYS = {"path", "format", "target", "device"}
VIRTIO_TARGETS = tuple(f"vd{letter}" for letter in "abcdefghijklmnopqrstuvwxyz")
CDROM_TARGETS = ("hdc", "hdd", "hda", "hdb")  # hdc first: the secondary IDE bus, as virt-install does

# The compute driver of each hypervisor; ``driver_for.set`` installs another (a FakeCompute) in tests.
driver_for: PerHypervisor[Compute] = PerHypervisor(lambda hv: LibvirtCompute(hv.conn, hv.id))


def use_driver(hypervisor: Hypervisor, driver: Compute) -> None:
    """Install ``driver`` (e.g. a FakeCompute) for ``hypervisor``: for tests."""
    driver_for.set(hypervisor, driver)


# -- argument conversion -----------------------------------------------------------------


def _only(args: Payload, allowed: set[str], where: str = "") -> None:
    unknown = sorted(set(args) - allowed)
    if unknown:
        raise InvalidRequest(f"unknown argument {where}{unknown[0]!r}; expected some of {sorted(allowed)}")


def _whole(value: Any, key: str) -> int:
    """A Struct number (a float) that must be whole."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise InvalidRequest(f"argument {key!r} must be a whole number, got {value!r}")
    return int(value)


def _text(args: Payload, key: str, where: str = "") -> str:
    value = args.get(key)
    if not isinstance(value, str):
        raise InvalidRequest(f"argument {where}{key!r} must be a string, got {value!r}")
    return value


def _flag(args: Payload, key: str) -> bool:
    value = args.get(key, False)
    if not isinstance(value, bool):
        raise InvalidRequest(f"argument {key!r} must be true or false, got {value!r}")
    return value


def _records(value: Any, key: str) -> list[Payload]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise InvalidRequest(f"argument {key!r} must be a list of objects, got {value!r}")
    return value


def spec_from_args(args: Payload, default_domain_type: str) -> DomainSpec:
    """A validated DomainSpec from Struct arguments; InvalidRequest names the bad field."""
    _only(args, SPEC_KEYS)
    for key in ("name", "uuid", "vcpus", "memory_mib"):
        if key not in args:
            raise InvalidRequest(f"argument {key!r} is required")
    disks = []
    records = _records(args.get("disks", []), "disks")
    # A disk without a target gets the first free one of its bus: vda, vdb...; hdc, hdd...
    taken = {d["target"] for d in records if isinstance(d.get("target"), str)}
    for i, d in enumerate(records):
        where = f"disks[{i}]."
        _only(d, DISK_KEYS, where)
        device = _text(d, "device", where) if "device" in d else "disk"
        if "target" in d:
            target = _text(d, "target", where)
        else:  # none free: the last candidate again, which DomainSpec refuses as a duplicate
            candidates = CDROM_TARGETS if device == "cdrom" else VIRTIO_TARGETS
            target = next((t for t in candidates if t not in taken), candidates[-1])
            taken.add(target)
        fmt = _text(d, "format", where) if "format" in d else "raw" if device == "cdrom" else "qcow2"
        disks.append(Disk(_text(d, "path", where), fmt, target, device))
    nics = []
    for i, n in enumerate(_records(args.get("nics", []), "nics")):
        _only(n, {"bridge", "mac"}, f"nics[{i}].")
        nics.append(Nic(_text(n, "bridge", f"nics[{i}]."), _text(n, "mac", f"nics[{i}].")))
    metadata = args.get("metadata", {})
    if not isinstance(metadata, dict):
        raise InvalidRequest(f"argument 'metadata' must be an object, got {metadata!r}")
    return DomainSpec(
        name=_text(args, "name"), uuid=_text(args, "uuid"),
        vcpus=_whole(args["vcpus"], "vcpus"), memory_mib=_whole(args["memory_mib"], "memory_mib"),
        arch=str(args.get("arch", "x86_64")), domain_type=str(args.get("domain_type", default_domain_type)),
        disks=tuple(disks), nics=tuple(nics), metadata=dict(metadata),
        **{key: _text(args, key) for key in _TEXT_KEYS if key in args},
    )


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


def _timeout(ctx: Context, args: Payload) -> float:
    """The graceful ``timeout`` of stop and reboot (default 60 s), capped by the job's deadline."""
    timeout = args.get("timeout", 60.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 <= timeout <= 3600:
        raise InvalidRequest(f"argument 'timeout' must be a number in [0, 3600], got {timeout!r}")
    # Leave a second of the deadline for the destroy (and start) and the reply.
    return max(0.0, min(float(timeout), ctx.remaining() - 1.0))


def _name(args: Payload, allowed: frozenset[str] | set[str] = frozenset()) -> str:
    _only(args, {"name", *allowed})
    return _text(args, "name")


# -- the operations ------------------------------------------------------------------------


@operation("vm.create")
def vm_create(ctx: Context, args: Payload) -> Payload:
    """Define and start a VM from a spec (args: SPEC_KEYS). Payload: its record + ``created``.

    Idempotent: if a VM with this uuid and name exists it is left as is and
    reported with ``created`` false. A name or uuid held by another VM FAILS.
    """
    spec, files = _guest_spec(ctx, args, "disk.qcow2")
    record = dict(driver_for(ctx.hypervisor).create(spec))
    return record if files is None else record | {"image_downloaded": files.downloaded}


def _guest_spec(ctx: Context, args: Payload, disk_name: str) -> tuple[DomainSpec, guests.GuestFiles | None]:
    """The spec of ``args`` and, on a real hypervisor given GUEST_KEYS, the guest's files with
    their disks and console log added to it, and a VNC display on the hypervisor's
    ``vnc_listen`` unless ``args`` name one. Simulated hypervisors get no files (None)."""
    guest_args = {key: args[key] for key in GUEST_KEYS if key in args}
    spec = spec_from_args({k: v for k, v in args.items() if k not in GUEST_KEYS}, _default_domain_type(ctx))
    if not guest_args or ctx.hypervisor.uri.startswith("test:"):
        return spec, None
    files = _prepare_guest(ctx, spec, guest_args, disk_name)
    vnc_listen = spec.vnc_listen if "vnc_listen" in args else ctx.hypervisor.vnc_listen
    return dataclasses.replace(spec, disks=spec.disks + files.disks, console_log=str(files.console_log),
                               vnc_listen=vnc_listen), files


def _prepare_guest(ctx: Context, spec: DomainSpec, args: Payload, disk_name: str) -> guests.GuestFiles:
    """The disk and config drive of a real guest from the GUEST_KEYS arguments (validated here)."""
    image = args.get("image")
    if not isinstance(image, dict):
        raise InvalidRequest(f"argument 'image' must be an object, got {image!r}")
    _only(image, {"image_id", "sha256", "size_bytes", "disk_format", "url", "token"}, "image.")
    source = ImageSource(image_id=_whole(image.get("image_id"), "image.image_id"),
                         sha256=_text(image, "sha256", "image."),
                         size_bytes=_whole(image.get("size_bytes"), "image.size_bytes"),
                         disk_format=_text(image, "disk_format", "image."), url=_text(image, "url", "image."),
                         token=image.get("token") if isinstance(image.get("token"), str) else None)
    keys = args.get("ssh_keys", [])
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise InvalidRequest(f"argument 'ssh_keys' must be a list of strings, got {keys!r}")
    user_data = None
    if args.get("user_data") is not None:
        try:
            user_data = base64.b64decode(_text(args, "user_data"), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidRequest("argument 'user_data' must be base64") from exc
    hostname = _text(args, "hostname") if "hostname" in args else spec.name
    disk_gib = _whole(args.get("disk_gib", 0), "disk_gib")
    return guests.prepare(ctx.hypervisor, spec.uuid, hostname=hostname, image=source, disk_gib=disk_gib,
                          ssh_keys=keys, user_data=user_data, disk_name=disk_name, nics=spec.nics)


@operation("vm.start")
def vm_start(ctx: Context, args: Payload) -> Payload:
    """Start VM ``name``. Idempotent: a running VM is success. Payload: its record."""
    return dict(driver_for(ctx.hypervisor).start(_name(args)))


@operation("vm.stop")
def vm_stop(ctx: Context, args: Payload) -> Payload:
    """Shut VM ``name`` off: ACPI, then destroy after ``timeout`` s (default 60, capped by the
    deadline); ``force`` destroys at once. Idempotent: a shut-off VM is success."""
    name = _name(args, {"force", "timeout"})
    return dict(driver_for(ctx.hypervisor).stop(name, _flag(args, "force"), _timeout(ctx, args)))


@operation("vm.reboot")
def vm_reboot(ctx: Context, args: Payload) -> Payload:
    """Reboot VM ``name``: shut down as vm.stop does (``timeout``), then start; ``force``
    resets instead. A shut-off VM is started. Payload: its record.

    Idempotent in its postcondition (the VM runs), not in effect: a replayed job
    reboots the guest once more, which is harmless for a reboot request.
    """
    name = _name(args, {"force", "timeout"})
    return dict(driver_for(ctx.hypervisor).reboot(name, _flag(args, "force"), _timeout(ctx, args)))


@operation("vm.delete")
def vm_delete(ctx: Context, args: Payload) -> Payload:
    """Destroy and undefine VM ``name``; with ``uuid``, also remove that guest's files (its disk,
    config drive and console log; never the cached image). Idempotent: a missing VM is success
    (``deleted`` false)."""
    name = _name(args, {"uuid"})
    result = dict(driver_for(ctx.hypervisor).delete(name))
    if "uuid" in args and not ctx.hypervisor.uri.startswith("test:"):
        vm_uuid = _text(args, "uuid")
        if not _UUID.fullmatch(vm_uuid):
            raise InvalidRequest(f"argument 'uuid' must be a uuid, got {vm_uuid!r}")
        result["files_removed"] = guests.remove(ctx.hypervisor, vm_uuid)
    return result


@operation("vm.resize")
def vm_resize(ctx: Context, args: Payload) -> Payload:
    """Set ``vcpus`` and ``memory_mib`` of the shut-off VM ``name``; a running VM FAILS.
    Idempotent: resizing to the current size is success. Payload: its record."""
    name = _name(args, {"vcpus", "memory_mib"})
    for key in ("vcpus", "memory_mib"):
        if key not in args:
            raise InvalidRequest(f"argument {key!r} is required")
    # The driver validates the new size as a DomainSpec before redefining anything.
    vcpus, memory_mib = _whole(args["vcpus"], "vcpus"), _whole(args["memory_mib"], "memory_mib")
    return dict(driver_for(ctx.hypervisor).resize(name, vcpus, memory_mib))


@operation("vm.rebuild")
def vm_rebuild(ctx: Context, args: Payload) -> Payload:
    """Redefine VM ``name`` from a spec with the same ``uuid`` (new disks/image), keeping its
    power state. Idempotent: rebuilding to the current spec again is success."""
    # A fresh disk on the (new) image, named by the job so that a replay finds the same one.
    spec, files = _guest_spec(ctx, args, f"disk-{ctx.job_id[:32]}.qcow2")
    record = dict(driver_for(ctx.hypervisor).rebuild(spec))  # stops the VM, redefines, restarts it
    if files is not None:
        guests.remove_other_disks(ctx.hypervisor, spec.uuid, keep=Path(files.disks[0].path))
    return record


@operation("vm.capture")
def vm_capture(ctx: Context, args: Payload) -> Payload:
    """Copy the shut-off VM ``name``'s first disk, its backing chain flattened, into a new image
    and upload it to the API (``image``: image_id, disk_format, url, token). The copy then stays
    in this hypervisor's image cache as the new image's base. Payload: image_id, size_bytes, sha256.

    A running VM FAILS (stop it first), and so does a VM without a disk (every VM of a
    simulated hypervisor). Idempotent: a replay copies and uploads the same bytes again,
    which the API accepts as success.
    """
    name = _name(args, {"image"})
    image = args.get("image")
    if not isinstance(image, dict):
        raise InvalidRequest(f"argument 'image' must be an object, got {image!r}")
    _only(image, {"image_id", "disk_format", "url", "token"}, "image.")
    target = ImageTarget(image_id=_whole(image.get("image_id"), "image.image_id"),
                         disk_format=_text(image, "disk_format", "image."), url=_text(image, "url", "image."),
                         token=_text(image, "token", "image."))
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
    return {"image_id": target.image_id, "size_bytes": size, "sha256": sha256}


@operation("vm.get")
def vm_get(ctx: Context, args: Payload) -> Payload:
    """The record of VM ``name``; a missing VM FAILS with "not found"."""
    return dict(driver_for(ctx.hypervisor).get(_name(args)))


@operation("vm.list")
def vm_list(ctx: Context, args: Payload) -> Payload:
    """Every VM on the hypervisor with its state, as ``{"vms": [record, ...]}``: the inventory."""
    _only(args, set())
    return {"vms": [dict(r) for r in driver_for(ctx.hypervisor).list()]}
