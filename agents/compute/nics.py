"""A VM's NICs on its hypervisor: their bridges and names, and the test guests that play them.

**Names.** ``vm.create`` names each NIC's tenant subnet by its VNI (proto/v1/compute.proto Nic);
``resolve`` gives it this hypervisor's bridge of that VNI (``<prefix>b<vni>``) and a host end
named by its MAC (``<prefix>t<last 8 hex digits>``, agents/network/names.py): the tap libvirt
makes for a real VM, or a test guest's veth. A NIC with a ``bridge`` and no VNI is the caller's
own (tests, a bridge made by hand) and is left as given.

**Bridges.** On a hypervisor with the kernel's data plane, a VM's tenant bridges are made by its
VPC's ``net.sync``, which the API sends when it binds the VM's ports, beside the ``vm.create``:
``await_bridges`` waits for them (at most ``BRIDGE_WAIT_S``, within the job's deadline), since
QEMU cannot start on a missing bridge. The fake data plane (simulated hypervisors) makes none,
and the test driver needs none.

**Test guests.** On a simulated hypervisor (libvirt ``test:///``) whose data plane is the
kernel's (the lab's hosts, ``CLOUDLAND_NETWORK=kernel``), nothing runs behind a domain, so each
tenant NIC is played by a guest namespace (agents/network/guest.py) named as its tap would be,
with ``eth0`` carrying the NIC's MAC and busybox udhcpc as its DHCP client daemon, so that it
takes its lease from the subnet's dnsmasq and can ping. ``TestGuests`` holds each VM's NICs in
a file (0600, ``<state dir>/compute/<prefix>-hv<id>/<vm>.json``), written before its guests are
made and removed after they are gone. ``repair`` (at the agent's start and every 60 s, in the
network's repair loop) makes every held guest right first, then removes every namespace and
link of the tap shape that no held VM has: only names of its own prefix. A leaf that dies keeps
its test domains (saved on disk and defined again by the next leaf, agents/simdomains.py) and
the guests: both are as they were, lease and all; a domain lost with its saved file is defined
again by the reconciler's ``recover``, which finds its guests as they were.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from pyroute2 import IPRoute

from cloudland.errors import DriverError, InvalidRequest
from cloudland_agents.compute.domain import Nic
from cloudland_agents.compute.guests import NicConfig
from cloudland_agents.hypervisor import Hypervisor, PerHypervisor
from cloudland_agents.network.dhcp import Changes, write_if_changed
from cloudland_agents.network.guest import NETNS_DIR, Guest, GuestError
from cloudland_agents.network.hostns import netns_id
from cloudland_agents.network.names import Names, check_vni
from cloudland_agents.network.ops import network_for, simulated
from cloudland_proto.v1 import compute_pb2 as cpb

BRIDGE_WAIT_S = 20.0


@dataclass(frozen=True)
class Resolved:
    """A VM's NICs as its domain has them, those of tenant subnets, and their addresses."""

    nics: tuple[Nic, ...]
    tenant: tuple[Nic, ...]  # on a VNI's bridge: made by the data plane, played by test guests
    configs: tuple[NicConfig, ...]  # for the config drive's network_data.json, in NIC order


def resolve(hypervisor: Hypervisor, messages: Sequence[cpb.Nic]) -> Resolved:
    """The NICs of ``messages`` with this hypervisor's bridge and host-end names; InvalidRequest
    naming the NIC whose VNI is out of range or that names neither a bridge nor a VNI."""
    # Only a VM with a tenant NIC asks for the hypervisor's data plane (and makes it, on first use).
    names = network_for(hypervisor).names if any(m.vni for m in messages) else None
    nics: list[Nic] = []
    tenant: list[Nic] = []
    for i, m in enumerate(messages):
        where = f"spec.nics[{i}]"
        if m.vni:
            check_vni(m.vni, where)
            assert names is not None
            nic = Nic(m.bridge or names.bridge(m.vni), m.mac, m.target or names.tap(m.mac), m.mtu)
            tenant.append(nic)
        elif m.bridge:
            nic = Nic(m.bridge, m.mac, m.target, m.mtu)
        else:
            raise InvalidRequest(f"{where} needs a bridge or a vni")
        nics.append(nic)
    configs = tuple(NicConfig(m.mac, m.mtu, tuple(m.ips), m.gateway, tuple(m.dns_servers)) for m in messages)
    return Resolved(tuple(nics), tuple(tenant), configs)


def await_bridges(hypervisor: Hypervisor, vm: str, nics: Sequence[Nic], budget_s: float, job_id: str = "") -> None:
    """Return once every bridge of ``nics`` exists (the kernel's data plane only); DriverError
    naming the missing ones after ``budget_s`` (at most ``BRIDGE_WAIT_S``)."""
    if network_for(hypervisor).fake or not nics:
        return
    wanted = sorted({nic.bridge for nic in nics})
    deadline = time.monotonic() + min(BRIDGE_WAIT_S, budget_s)
    host = network_for(hypervisor).names.host  # a simulated hypervisor's own namespace, made by its sync
    while host and netns_id(host) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    with IPRoute(netns=host, flags=0) if host and netns_id(host) else IPRoute() as ipr:
        while True:
            missing = [b for b in wanted if not ipr.link_lookup(ifname=b)]
            if not missing:
                return
            if time.monotonic() >= deadline:
                raise DriverError(hypervisor.id, f"VM {vm!r}: no bridge {', '.join(missing)} on this hypervisor "
                                                 f"after {min(BRIDGE_WAIT_S, budget_s):g} s (its VPC's net.sync "
                                                 "makes it)", job_id)
            time.sleep(0.05)


def plays_guests(hypervisor: Hypervisor) -> bool:
    """Whether test guests play this hypervisor's VMs' NICs: a simulated one on the kernel's plane."""
    return simulated(hypervisor) and not network_for(hypervisor).fake


class TestGuests:
    """The test guests of one simulated hypervisor (module docstring)."""

    __test__ = False  # not a pytest class

    def __init__(self, hypervisor: Hypervisor, names: Names) -> None:
        self.hypervisor = hypervisor.id
        self.names = names
        self.directory = hypervisor.state_dir / "compute" / f"{names.prefix}-hv{hypervisor.id}"
        self._host: IPRoute | None = None
        self._opened_in: tuple[int, int] | None = None  # the hypervisor's own namespace, if it has one
        self._lock = threading.Lock()

    @property
    def host(self) -> IPRoute:
        """A handle where the guests' cables are: the agent's namespace, or the hypervisor's own
        (agents/network/hostns.py; opened again if it was made again)."""
        where = netns_id(self.names.host) if self.names.host else None
        if self._host is not None and where != self._opened_in:
            self.close()
        if self._host is None:
            if self.names.host and where is None:
                raise DriverError(self.hypervisor, f"no namespace {self.names.host} (its VPC's net.sync makes it)")
            self._host = IPRoute(netns=self.names.host, flags=0) if self.names.host else IPRoute()
            self._opened_in = where
        return self._host

    def close(self) -> None:
        if self._host is not None:
            self._host.close()
            self._host = None

    def held(self) -> dict[str, tuple[Nic, ...]]:
        """Each held VM's tenant NICs."""
        found: dict[str, tuple[Nic, ...]] = {}
        for path in sorted(self.directory.glob("*.json")) if self.directory.is_dir() else []:
            try:
                found[path.stem] = tuple(Nic(**n) for n in json.loads(path.read_text()))
            except (OSError, ValueError, TypeError):
                continue  # half-written by a dying agent: its VM's next create or delete rewrites it
        return found

    def plug(self, vm: str, nics: Sequence[Nic]) -> Changes:
        """VM ``vm``'s guests are made (those it held before and no longer has are removed)."""
        with self._lock:
            changes = Changes()
            before = self.held().get(vm, ())
            if nics:
                self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
                write_if_changed(self.directory / f"{vm}.json", json.dumps([asdict(n) for n in nics]))
            for nic in nics:
                self._ensure(nic, changes)
            for nic in set(before) - set(nics):
                self._remove(nic.target, changes)
            if not nics:
                (self.directory / f"{vm}.json").unlink(missing_ok=True)
            return changes

    def unplug(self, vm: str, also: Sequence[Nic] = ()) -> Changes:
        """No guest of VM ``vm`` remains (those held, and ``also``: its domain's), nor its file."""
        with self._lock:
            changes = Changes()
            for nic in {*self.held().get(vm, ()), *also}:
                if nic.target:
                    self._remove(nic.target, changes)
            (self.directory / f"{vm}.json").unlink(missing_ok=True)
            return changes

    def repair(self) -> Changes:
        """Every held guest made right, then every guest of this prefix that none holds removed."""
        with self._lock:
            changes = Changes()
            wanted: set[str] = set()
            held = self.held()
            if self.names.host and not held and netns_id(self.names.host) is None:
                return changes  # a hypervisor of its own namespace that has never had a guest
            for nics in held.values():
                for nic in nics:
                    self._ensure(nic, changes)
                    wanted.add(nic.target)
            for name in sorted(self._present() - wanted):
                self._remove(name, changes)
            return changes

    def _present(self) -> set[str]:
        links = {link.get_attr("IFLA_IFNAME") for link in self.host.get_links()}
        spaces = {self.names.link_of_netns(p.name) for p in NETNS_DIR.iterdir()} if NETNS_DIR.is_dir() else set()
        return {name for name in links | spaces if name and self.names.is_tap(name)}

    def _guest(self, nic: Nic) -> Guest:
        return Guest(self.host, nic.target, nic.bridge, nic.mac, self.names.netns(nic.target))

    def _ensure(self, nic: Nic, changes: Changes) -> None:
        guest = self._guest(nic)
        try:
            made = guest.ensure()
            made += guest.run_dhcp(self.directory)
        except GuestError as exc:
            raise DriverError(self.hypervisor, str(exc)) from exc
        changes.added += made
        changes.unchanged += not made

    def _remove(self, name: str, changes: Changes) -> None:
        try:
            Guest(self.host, name, "", "", self.names.netns(name)).unplug(self.directory)
        except (GuestError, OSError) as exc:
            raise DriverError(self.hypervisor, f"cannot remove test guest {name}: {exc}") from exc
        changes.removed += 1


guests_for: PerHypervisor[TestGuests] = PerHypervisor(lambda hv: TestGuests(hv, network_for(hv).names))


def lease_of(hypervisor: Hypervisor, nic: Nic) -> Path:
    """Where the guest of ``nic`` writes its lease (for tests and diagnostics)."""
    return guests_for(hypervisor).directory / f"{nic.target}.lease"
