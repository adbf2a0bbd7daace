"""The ``vm.*`` agent operations: the compute driver (agents/compute.py) behind the registry.

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

import threading
import weakref
from typing import Any

from cloudland.errors import InvalidRequest
from cloudland_agents.compute import Compute, Disk, DomainSpec, LibvirtCompute, Nic
from cloudland_agents.hypervisor import Hypervisor
from cloudland_agents.ops import Context, Payload, operation

SPEC_KEYS = {"name", "uuid", "vcpus", "memory_mib", "arch", "domain_type", "disks", "nics", "metadata"}

# One driver per Hypervisor object (not per id: tests open many hypervisors with
# the same id), so its per-VM locks are shared by every command on that host.
_drivers: weakref.WeakKeyDictionary[Hypervisor, Compute] = weakref.WeakKeyDictionary()
_drivers_guard = threading.Lock()


def driver_for(hypervisor: Hypervisor) -> Compute:
    """The compute driver of ``hypervisor``, made on first use."""
    with _drivers_guard:
        driver = _drivers.get(hypervisor)
        if driver is None:
            driver = _drivers[hypervisor] = LibvirtCompute(hypervisor.conn, hypervisor.id)
        return driver


def use_driver(hypervisor: Hypervisor, driver: Compute) -> None:
    """Install ``driver`` (e.g. a FakeCompute) for ``hypervisor``: for tests."""
    with _drivers_guard:
        _drivers[hypervisor] = driver


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
    for i, d in enumerate(_records(args.get("disks", []), "disks")):
        _only(d, {"path", "format", "target"}, f"disks[{i}].")
        disks.append(Disk(_text(d, "path", f"disks[{i}]."), str(d.get("format", "qcow2")),
                          str(d.get("target", f"vd{chr(ord('a') + min(i, 25))}"))))
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
    )


def _default_domain_type(ctx: Context) -> str:
    # test:/// accepts only type='test'-style hosts; a real host runs KVM. TCG
    # (real-VM tests without /dev/kvm) passes domain_type "qemu" explicitly.
    return "test" if ctx.hypervisor.uri.startswith("test:") else "kvm"


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
    spec = spec_from_args(args, _default_domain_type(ctx))
    return dict(driver_for(ctx.hypervisor).create(spec))


@operation("vm.start")
def vm_start(ctx: Context, args: Payload) -> Payload:
    """Start VM ``name``. Idempotent: a running VM is success. Payload: its record."""
    return dict(driver_for(ctx.hypervisor).start(_name(args)))


@operation("vm.stop")
def vm_stop(ctx: Context, args: Payload) -> Payload:
    """Shut VM ``name`` off: ACPI, then destroy after ``timeout`` s (default 60, capped by the
    deadline); ``force`` destroys at once. Idempotent: a shut-off VM is success."""
    name = _name(args, {"force", "timeout"})
    timeout = args.get("timeout", 60.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 <= timeout <= 3600:
        raise InvalidRequest(f"argument 'timeout' must be a number in [0, 3600], got {timeout!r}")
    # Leave a second of the deadline for the destroy and the reply.
    timeout = max(0.0, min(float(timeout), ctx.remaining() - 1.0))
    return dict(driver_for(ctx.hypervisor).stop(name, _flag(args, "force"), timeout))


@operation("vm.reboot")
def vm_reboot(ctx: Context, args: Payload) -> Payload:
    """Reboot VM ``name`` (``force``: reset); a shut-off VM is started. Payload: its record.

    Idempotent in its postcondition (the VM runs), not in effect: a replayed job
    reboots the guest once more, which is harmless for a reboot request.
    """
    name = _name(args, {"force"})
    return dict(driver_for(ctx.hypervisor).reboot(name, _flag(args, "force")))


@operation("vm.delete")
def vm_delete(ctx: Context, args: Payload) -> Payload:
    """Destroy and undefine VM ``name``. Idempotent: a missing VM is success (``deleted`` false)."""
    return dict(driver_for(ctx.hypervisor).delete(_name(args)))


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
    spec = spec_from_args(args, _default_domain_type(ctx))
    return dict(driver_for(ctx.hypervisor).rebuild(spec))


@operation("vm.get")
def vm_get(ctx: Context, args: Payload) -> Payload:
    """The record of VM ``name``; a missing VM FAILS with "not found"."""
    return dict(driver_for(ctx.hypervisor).get(_name(args)))


@operation("vm.list")
def vm_list(ctx: Context, args: Payload) -> Payload:
    """Every VM on the hypervisor with its state, as ``{"vms": [record, ...]}``: the inventory."""
    _only(args, set())
    return {"vms": [dict(r) for r in driver_for(ctx.hypervisor).list()]}
