"""FakeCompute: the compute verbs in memory, for unit tests of upper layers.

Same interface and postconditions as LibvirtCompute (the contract suite in
tests/unit/test_compute_contract.py runs against both). Records come from the
real ``domain_xml``/``parse_domain_xml`` pair, so their shape cannot drift.
It records every call in ``.calls``; ``fail_next(verb, error)`` makes the next
call of ``verb`` raise ``error``: failures are injected through data (cri-api's
fake), not subclasses. A live VM with a VNC display gets a port as QEMU's autoport
gives one (the lowest free from 5900), so its record reads like a real guest's.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

from cloudland_agents.compute.driver import (
    DomainSpec, Nic, VMConflict, VMInfo, VMNotFound, VMStateError, domain_xml, parse_domain_xml,
)
from cloudland_agents.compute.domain import LIVE_STATES

VNC_BASE_PORT = 5900  # QEMU's display 0


class FakeCompute:
    """An in-memory hypervisor's VMs: name -> (spec, state)."""

    def __init__(self, hypervisor_id: int = 0) -> None:
        self.hypervisor_id = hypervisor_id
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.vms: dict[str, tuple[DomainSpec, str]] = {}
        self.vnc_ports: dict[str, int] = {}  # name -> port of each live VNC display
        self._failures: dict[str, Exception] = {}
        self._lock = threading.Lock()  # one lock: the fake is quick, per-VM locks buy nothing

    def fail_next(self, verb: str, error: Exception) -> None:
        """Make exactly the next call of ``verb`` raise ``error`` (then behave normally)."""
        with self._lock:
            self._failures[verb] = error

    def _enter(self, verb: str, *args: Any) -> None:
        self.calls.append((verb, args))
        error = self._failures.pop(verb, None)
        if error is not None:
            raise error

    def _vm(self, name: str) -> tuple[DomainSpec, str]:
        if name not in self.vms:
            raise VMNotFound(self.hypervisor_id, f"VM {name!r} not found")
        return self.vms[name]

    def _record(self, name: str) -> VMInfo:
        spec, state = self._vm(name)
        record = parse_domain_xml(domain_xml(spec), state)
        record["vnc_port"] = self.vnc_ports.get(name, 0)
        return record

    def _put(self, name: str, spec: DomainSpec, state: str) -> None:
        """Hold VM ``name``; its display keeps its port while it lives, as QEMU's does."""
        self.vms[name] = (spec, state)
        if not (spec.vnc_listen and state in LIVE_STATES):
            self.vnc_ports.pop(name, None)
        elif name not in self.vnc_ports:
            taken = set(self.vnc_ports.values())
            self.vnc_ports[name] = next(port for port in range(VNC_BASE_PORT, VNC_BASE_PORT + len(taken) + 1)
                                        if port not in taken)

    def create(self, spec: DomainSpec, extra_disks: tuple[str, ...] = ()) -> dict[str, Any]:
        with self._lock:
            self._enter("create", spec, *((extra_disks,) if extra_disks else ()))
            for name, (held, _state) in self.vms.items():
                if held.uuid == spec.uuid and name != spec.name:
                    raise VMConflict(self.hypervisor_id, f"uuid {spec.uuid} is held by VM {name!r}, not {spec.name!r}")
            if spec.name in self.vms:
                if self.vms[spec.name][0].uuid != spec.uuid:
                    raise VMConflict(self.hypervisor_id, f"VM {spec.name!r} exists with uuid "
                                                         f"{self.vms[spec.name][0].uuid}, not {spec.uuid}")
                return {**self._record(spec.name), "created": False}
            self._put(spec.name, spec, "running")
            return {**self._record(spec.name), "created": True}

    def _set_state(self, verb: str, name: str, state: str, *args: Any) -> VMInfo:
        with self._lock:
            self._enter(verb, name, *args)
            spec, _ = self._vm(name)
            self._put(name, spec, state)
            return self._record(name)

    def start(self, name: str) -> VMInfo:
        return self._set_state("start", name, "running")

    def stop(self, name: str, force: bool = False, timeout: float = 60.0) -> VMInfo:
        return self._set_state("stop", name, "shutoff", force, timeout)

    def reboot(self, name: str, force: bool = False, timeout: float = 60.0) -> VMInfo:
        return self._set_state("reboot", name, "running", force, timeout)

    def delete(self, name: str) -> dict[str, Any]:
        with self._lock:
            self._enter("delete", name)
            self.vnc_ports.pop(name, None)
            return {"name": name, "deleted": self.vms.pop(name, None) is not None}

    def resize(self, name: str, vcpus: int, memory_mib: int) -> VMInfo:
        with self._lock:
            self._enter("resize", name, vcpus, memory_mib)
            spec, state = self._vm(name)
            if state != "shutoff":
                raise VMStateError(self.hypervisor_id, f"resize of VM {name!r} needs it shut off; stop it first")
            self._put(name, replace(spec, vcpus=vcpus, memory_mib=memory_mib), state)
            return self._record(name)

    def rebuild(self, spec: DomainSpec) -> VMInfo:
        with self._lock:
            self._enter("rebuild", spec)
            held, state = self._vm(spec.name)
            if held.uuid != spec.uuid:
                raise VMConflict(self.hypervisor_id, f"rebuild of VM {spec.name!r} must keep uuid {held.uuid}, "
                                                     f"got {spec.uuid}")
            self._put(spec.name, spec, state)
            return self._record(spec.name)

    def attach_nic(self, name: str, nic: Nic) -> tuple[VMInfo, bool]:
        with self._lock:
            self._enter("attach_nic", name, nic)
            spec, state = self._vm(name)
            if any(n.mac == nic.mac for n in spec.nics):
                return self._record(name), False
            self._put(name, replace(spec, nics=spec.nics + (nic,)), state)
            return self._record(name), True

    def detach_nic(self, name: str, mac: str) -> tuple[VMInfo, bool]:
        with self._lock:
            self._enter("detach_nic", name, mac)
            spec, state = self._vm(name)
            kept = tuple(n for n in spec.nics if n.mac != mac)
            self._put(name, replace(spec, nics=kept), state)
            return self._record(name), len(kept) < len(spec.nics)

    def get(self, name: str) -> VMInfo:
        with self._lock:
            self._enter("get", name)
            return self._record(name)

    def list(self) -> list[VMInfo]:
        with self._lock:
            self._enter("list")
            return [self._record(name) for name in self.vms]
