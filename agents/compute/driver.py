"""The compute driver: virtual machines on one hypervisor, through libvirt.

Vocabulary
    VM        a virtual machine CloudLand manages; named uniquely on its hypervisor
              and identified for idempotency by its uuid.
    domain    libvirt's object for a VM. Every VM is a *persistent* domain.
    spec      a ``DomainSpec``: the structured, validated description of a VM
              (size, disks and CD-ROMs, NICs, metadata, a kernel to boot directly,
              a console log file, a VNC display's listen address) from which
              the domain XML is built
              with ElementTree; no XML is ever pasted from strings
              (agents/compute/domain.py).
    state     one of ``STATES``: running, paused, stopping, shutoff, crashed,
              suspended, unknown (libvirt's states, folded to what callers act on).
    record    a ``VMInfo`` dict: a VM's definition read back from libvirt plus
              its state and its VNC display's live port (``vnc_port``, 0 unless
              it runs). ``get`` and ``list`` return records; the reconciler
              compares them with desired state.

Verbs and their postconditions (``Compute``; ``LibvirtCompute`` and ``FakeCompute``)
    create(spec, extra_disks)
                          a domain with spec.uuid exists and, if it was made now,
                          runs. Idempotent: an existing domain with the same uuid
                          and name is left as is and reported (``created`` False).
                          A name or uuid held by another VM is a VMConflict.
                          ``extra_disks``: ``<disk>`` elements (XML) defined with it,
                          not part of its spec: a boot volume (agents/storage/disks.py).
    start(name)           the VM runs. Already running: success.
    stop(name, force, timeout)
                          the VM is shut off. force=False asks the guest (the ACPI
                          power button, pressed again every ``shutdown_retry_s``:
                          a guest still booting misses it, as in nova) and destroys
                          it after ``timeout`` s; force=True destroys at once.
                          Already shut off: success.
    reboot(name, force, timeout)
                          the VM runs and has restarted since the call (a shut-off
                          VM is started). force=False is a stop as above, then a
                          start: nova's soft reboot. libvirt's own reboot returns
                          before the guest has restarted and succeeds even if the
                          guest ignores ACPI, so the postcondition could not be
                          told. force=True resets instead of asking.
    delete(name)          no domain of that name exists. Missing VM: success.
    resize(name, vcpus, memory_mib)
                          the stopped VM's definition has the new size. A running
                          VM is refused with VMStateError (stop it first): a
                          reconciler retries after stopping rather than the agent
                          silently rebooting a guest.
    rebuild(spec)         the VM keeps name and uuid, its definition is rebuilt
                          from spec (disks/image, NICs, size, metadata), and its
                          power state is what it was (a running VM restarts).
    attach_nic(name, nic) the VM has ``nic`` (by MAC), live while it runs and in its
                          definition; returns (record, whether it was attached now).
                          libvirt's test driver cannot hot-plug: there the domain is
                          defined again and restarted if it ran (nothing runs in it).
    detach_nic(name, mac) the VM has no NIC of ``mac``; (record, whether one went).
    get(name)             the VM's record; VMNotFound if there is none.
    list()                every domain's record (foreign domains included, so the
                          reconciler sees everything on the host).

Operations on one VM are serialised by a lock per name; different VMs proceed
concurrently (docs/architecture.md, agents; agents/locks.py). Every libvirtError is translated here into
DriverError naming the hypervisor and the VM.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from xml.etree import ElementTree as ET
from typing import Any, Protocol, TypeVar

import libvirt

from cloudland.errors import DriverError, VMConflict, VMNotFound, VMStateError
from cloudland_agents.compute.domain import (  # re-exported: the driver's vocabulary lives here
    STATES, Disk, DomainSpec, Nic, VMInfo, domain_xml, interface_element, parse_domain_xml, spec_of_record,
)
from cloudland_agents.hypervisor import LIBVIRT_STATES
from cloudland_agents.locks import KeyLocks

__all__ = [
    "STATES", "Compute", "Disk", "DomainSpec", "LibvirtCompute", "Nic", "VMConflict", "VMInfo",
    "VMNotFound", "VMStateError", "domain_xml", "parse_domain_xml",
]


# -- the interface and the libvirt driver -----------------------------------------------


class Compute(Protocol):
    """The verbs of the module docstring; both drivers implement them."""

    def create(self, spec: DomainSpec, extra_disks: tuple[str, ...] = ()) -> dict[str, Any]: ...
    def start(self, name: str) -> VMInfo: ...
    def stop(self, name: str, force: bool = False, timeout: float = 60.0) -> VMInfo: ...
    def reboot(self, name: str, force: bool = False, timeout: float = 60.0) -> VMInfo: ...
    def delete(self, name: str) -> dict[str, Any]: ...
    def resize(self, name: str, vcpus: int, memory_mib: int) -> VMInfo: ...
    def rebuild(self, spec: DomainSpec) -> VMInfo: ...
    def attach_nic(self, name: str, nic: Nic) -> tuple[VMInfo, bool]: ...
    def detach_nic(self, name: str, mac: str) -> tuple[VMInfo, bool]: ...
    def get(self, name: str) -> VMInfo: ...
    def list(self) -> list[VMInfo]: ...


_LIBVIRT_STATES = LIBVIRT_STATES
T = TypeVar("T")


def lookup_domain(conn: libvirt.virConnect, hypervisor_id: int, name: str) -> libvirt.virDomain:
    """The domain ``name`` on ``conn``; VMNotFound if there is none, DriverError if libvirt fails."""
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            raise VMNotFound(hypervisor_id, f"VM {name!r} not found") from exc
        raise DriverError(hypervisor_id, f"lookup of VM {name!r} failed: {exc}") from exc


class LibvirtCompute:
    """The driver on a libvirt connection: test:///, qemu:///system, the same code."""

    def __init__(self, conn: libvirt.virConnect, hypervisor_id: int, poll_s: float = 0.2,
                 shutdown_retry_s: float = 10.0) -> None:
        self.conn = conn
        self.hypervisor_id = hypervisor_id
        self.poll_s = poll_s
        self.shutdown_retry_s = shutdown_retry_s  # nova's default interval between ACPI presses
        self.locks = KeyLocks()  # one per VM name

    def _call(self, vm: str, what: str, fn: Callable[[], T]) -> T:
        """Run a libvirt call; translate its error at the boundary, naming VM and hypervisor."""
        try:
            return fn()
        except libvirt.libvirtError as exc:
            cls = VMNotFound if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN else DriverError
            raise cls(self.hypervisor_id, f"{what} of VM {vm!r} failed: {exc}") from exc

    def _domain(self, name: str) -> libvirt.virDomain:
        return lookup_domain(self.conn, self.hypervisor_id, name)

    def _state(self, dom: libvirt.virDomain, name: str) -> str:
        return _LIBVIRT_STATES.get(self._call(name, "state", dom.state)[0], "unknown")

    def _record(self, dom: libvirt.virDomain, name: str) -> VMInfo:
        state = self._state(dom, name)
        return parse_domain_xml(self._call(name, "read definition", lambda: dom.XMLDesc(0)), state)

    def _find_uuid(self, spec: DomainSpec) -> libvirt.virDomain | None:
        try:
            return self.conn.lookupByUUIDString(spec.uuid)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise DriverError(self.hypervisor_id, f"lookup of VM {spec.name!r} failed: {exc}") from exc

    def create(self, spec: DomainSpec, extra_disks: tuple[str, ...] = ()) -> dict[str, Any]:
        with self.locks.hold(spec.name):
            existing = self._find_uuid(spec)
            if existing is not None:
                held_by = self._call(spec.name, "name", existing.name)
                if held_by != spec.name:
                    raise VMConflict(self.hypervisor_id, f"uuid {spec.uuid} is held by VM {held_by!r}, "
                                                         f"not {spec.name!r}")
                return {**self._record(existing, spec.name), "created": False}
            try:
                other = self._domain(spec.name)
            except VMNotFound:
                other = None
            if other is not None:
                held = self._call(spec.name, "uuid", other.UUIDString)
                raise VMConflict(self.hypervisor_id, f"VM {spec.name!r} exists with uuid {held}, not {spec.uuid}")
            dom = self._call(spec.name, "define", lambda: self.conn.defineXML(domain_xml(spec, extra_disks)))
            try:
                self._call(spec.name, "start", dom.create)
            except DriverError:
                # Roll back so that a retry of the job creates afresh instead of
                # finding a shut-off domain and reporting it as created.
                try:
                    dom.undefine()
                except libvirt.libvirtError:
                    pass
                raise
            return {**self._record(dom, spec.name), "created": True}

    def start(self, name: str) -> VMInfo:
        with self.locks.hold(name):
            dom = self._domain(name)
            if not self._call(name, "status", dom.isActive):
                self._call(name, "start", dom.create)
            return self._record(dom, name)

    def stop(self, name: str, force: bool = False, timeout: float = 60.0) -> VMInfo:
        with self.locks.hold(name):
            dom = self._domain(name)
            self._stop(dom, name, force, timeout)
            return self._record(dom, name)

    def _stop(self, dom: libvirt.virDomain, name: str, force: bool, timeout: float) -> None:
        if not force:
            # A guest may ignore ACPI; past the timeout it is destroyed (nova's power_off).
            now = time.monotonic()
            end, press = now + timeout, now
            while now < end:
                state = self._state(dom, name)
                if state == "shutoff":
                    return
                if state == "running":
                    if now >= press:  # again and again: a guest that is still booting misses it
                        self._press_power_button(dom, name)
                        press = now + self.shutdown_retry_s
                elif state != "stopping":  # paused or crashed: the guest cannot hear the button
                    break
                time.sleep(self.poll_s)
                now = time.monotonic()
        if self._call(name, "status", dom.isActive):
            self._unless_off(dom, name, "destroy", dom.destroy)

    def _press_power_button(self, dom: libvirt.virDomain, name: str) -> None:
        try:
            dom.shutdown()
        except libvirt.libvirtError as exc:
            # libvirt takes a press only while the domain is running; between our look and
            # the press the guest may have begun to power off ("stopping") or shut off.
            if self._state(dom, name) == "running":
                raise DriverError(self.hypervisor_id, f"shutdown of VM {name!r} failed: {exc}") from exc

    def _unless_off(self, dom: libvirt.virDomain, name: str, what: str, fn: Callable[[], object]) -> None:
        """Run a power-off call; its error does not count if the guest shut off meanwhile."""
        try:
            fn()
        except libvirt.libvirtError as exc:
            if self._call(name, "status", dom.isActive):
                raise DriverError(self.hypervisor_id, f"{what} of VM {name!r} failed: {exc}") from exc

    def reboot(self, name: str, force: bool = False, timeout: float = 60.0) -> VMInfo:
        with self.locks.hold(name):
            dom = self._domain(name)
            if force and self._call(name, "status", dom.isActive):
                self._call(name, "reset", lambda: dom.reset(0))  # done when it returns
            else:
                self._stop(dom, name, False, timeout)
                self._call(name, "start", dom.create)
            return self._record(dom, name)

    def delete(self, name: str) -> dict[str, Any]:
        with self.locks.hold(name):
            try:
                dom = self._domain(name)
            except VMNotFound:
                return {"name": name, "deleted": False}
            self._stop(dom, name, force=True, timeout=0)
            flags = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            if self._call(name, "host type", self.conn.getType).lower() != "test":  # test:/// refuses NVRAM
                flags |= libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
            try:
                dom.undefineFlags(flags)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:  # gone meanwhile: that is the goal
                    raise DriverError(self.hypervisor_id, f"undefine of VM {name!r} failed: {exc}") from exc
            return {"name": name, "deleted": True}

    def resize(self, name: str, vcpus: int, memory_mib: int) -> VMInfo:
        with self.locks.hold(name):
            dom = self._domain(name)
            if self._call(name, "status", dom.isActive):
                raise VMStateError(self.hypervisor_id, f"resize of VM {name!r} needs it shut off; stop it first")
            spec = spec_of_record(self._record(dom, name), vcpus=vcpus, memory_mib=memory_mib)
            dom = self._call(name, "define", lambda: self.conn.defineXML(domain_xml(spec)))
            return self._record(dom, name)

    def rebuild(self, spec: DomainSpec) -> VMInfo:
        with self.locks.hold(spec.name):
            dom = self._domain(spec.name)
            uuid = self._call(spec.name, "uuid", dom.UUIDString)
            if uuid != spec.uuid:
                raise VMConflict(self.hypervisor_id, f"rebuild of VM {spec.name!r} must keep uuid {uuid}, "
                                                     f"got {spec.uuid}")
            return self._redefine(dom, spec)  # the old disks are being replaced: stopped first

    def _redefine(self, dom: libvirt.virDomain, spec: DomainSpec) -> VMInfo:
        """Define ``spec`` over the domain, destroyed first and started again if it ran."""
        was_running = self._call(spec.name, "status", dom.isActive)
        self._stop(dom, spec.name, force=True, timeout=0)
        dom = self._call(spec.name, "define", lambda: self.conn.defineXML(domain_xml(spec)))
        if was_running:
            self._call(spec.name, "start", dom.create)
        return self._record(dom, spec.name)

    def attach_nic(self, name: str, nic: Nic) -> tuple[VMInfo, bool]:
        with self.locks.hold(name):
            dom = self._domain(name)
            record = self._record(dom, name)
            if any(n["mac"] == nic.mac for n in record["nics"]):
                return record, False
            spec = spec_of_record(record)
            spec = replace(spec, nics=spec.nics + (nic,))  # validated before libvirt sees it
            return self._change_nic(dom, spec, "attach", nic), True

    def detach_nic(self, name: str, mac: str) -> tuple[VMInfo, bool]:
        with self.locks.hold(name):
            dom = self._domain(name)
            record = self._record(dom, name)
            spec = spec_of_record(record)
            gone = next((n for n in spec.nics if n.mac == mac), None)
            if gone is None:
                return record, False
            spec = replace(spec, nics=tuple(n for n in spec.nics if n.mac != mac))
            return self._change_nic(dom, spec, "detach", gone), True

    def _change_nic(self, dom: libvirt.virDomain, spec: DomainSpec, verb: str, nic: Nic) -> VMInfo:
        """Hot-plug (or unplug) ``nic``, live while the VM runs and in its definition; on the test
        driver, which cannot, define ``spec`` again (restarting the domain if it ran)."""
        if self._call(spec.name, "host type", self.conn.getType).lower() == "test":
            return self._redefine(dom, spec)
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
        if self._call(spec.name, "status", dom.isActive):
            flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
        device = ET.tostring(interface_element(nic), encoding="unicode")
        call = dom.attachDeviceFlags if verb == "attach" else dom.detachDeviceFlags
        self._call(spec.name, f"{verb} of NIC {nic.mac}", lambda: call(device, flags))
        return self._record(dom, spec.name)

    def get(self, name: str) -> VMInfo:
        with self.locks.hold(name):
            return self._record(self._domain(name), name)

    def list(self) -> list[VMInfo]:
        # No per-VM locks: an inventory is a snapshot and must not wait behind a slow stop.
        records = []
        for dom in self._call("*", "list", self.conn.listAllDomains):
            try:
                records.append(self._record(dom, self._call("?", "name", dom.name)))
            except VMNotFound:
                continue  # deleted while we listed
        return records
