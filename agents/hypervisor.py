"""Hypervisors an agent hosts: a libvirt connection each.

In production a leaf hosts one hypervisor, ``qemu:///system``. Simulated
hypervisors (tests, benchmarks, the all-in-one cloud) are each their own
libvirt ``test:///<file>`` host: an independent in-memory hypervisor whose CPU
and memory come from the ``<node>`` element of its file.
"""

from __future__ import annotations

import ipaddress
import os
import threading
import weakref
from collections.abc import Callable
from itertools import islice
from pathlib import Path
from typing import Any, Generic, TypeVar
from xml.etree import ElementTree as ET

import libvirt

from cloudland.errors import DriverError
from cloudland_agents.compute.domain import METADATA_NS
from cloudland_agents.simdomains import SavedDomains
from cloudland_agents.storage.disks import disks_of
from cloudland_proto.v1 import envelope_pb2 as pb
from cloudland_proto.v1 import storage_pb2 as spb

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors arrive as exceptions

# libvirt's domain states in CloudLand's words (agents/compute/domain.py STATES).
LIBVIRT_STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: "unknown", libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running",  # blocked on I/O is still running to a caller
    libvirt.VIR_DOMAIN_PAUSED: "paused", libvirt.VIR_DOMAIN_SHUTDOWN: "stopping",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff", libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
}


T = TypeVar("T")
DISKS_REREAD_REPORTS = 60  # a domain's disks are read again at least every 60 reports (heartbeats: ~60 s)


class Hypervisor:
    """One libvirt host. ``vnc_listen`` is the address real guests' VNC displays listen on, ""
    for none (agents/compute/ops.py); simulated guests get none. ``vtep`` is the host's underlay
    IPv4 address, where its VXLAN tunnels end (agents/network/), "" if unknown."""

    def __init__(self, hypervisor_id: int, uri: str, hostname: str, state_dir: Path | None = None,
                 vnc_listen: str = "127.0.0.1", vtep: str = "") -> None:
        self.id = hypervisor_id
        self.uri = uri
        self.hostname = hostname
        self.vnc_listen = vnc_listen
        self.vtep = vtep
        # Where this agent keeps its files: guests' disks and drives, the image cache (agents/compute/guests.py).
        self.state_dir = (state_dir or Path("var")).resolve()
        self._instance_ids: dict[str, int] = {}  # uuid -> CloudLand's instance id (0: none), read once
        # uuid -> its disks (agents/storage/disks.py), read once and again after a vol.* verb on it,
        # and the oldest-read few at every report (DISKS_REREAD_REPORTS).
        self._disks: dict[str, list[spb.AttachedDisk]] = {}
        self._age_due = 0.0  # domains' disks owed a re-read (_age_disks)
        self.saved: SavedDomains | None = None  # a simulated hypervisor's domains on disk (open_simulated)
        try:
            self.conn = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            raise DriverError(hypervisor_id, f"cannot open libvirt at {uri}: {exc}") from exc

    def report(self) -> pb.HypervisorReport:
        """Resources and VMs now. Runs on the rank's MPI thread (hello, heartbeats) while
        worker threads define and undefine domains on the same connection."""
        self._age_disks()
        try:
            _model, memory_mib, cpus, *_ = self.conn.getInfo()
            free = self.conn.getFreeMemory()
            vms: list[pb.VmState] = []
            running = used_kib = 0
            for d in self.conn.listAllDomains():
                try:
                    state, active = d.state()[0], d.isActive()
                    # The test driver's file-defined hosts have no NUMA cells, so libvirt
                    # reports 0 free; derive it below from what the running domains hold.
                    used_kib += d.maxMemory() if active and free == 0 else 0
                except libvirt.libvirtError as exc:
                    # Undefined since listAllDomains (a concurrent vm.delete): it is not on
                    # the host any more, so it is not reported. Raising instead would kill
                    # the rank, since nothing on the MPI thread catches it.
                    if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                        continue
                    raise
                running += bool(active)
                uuid = d.UUIDString()
                vms.append(pb.VmState(name=d.name(), uuid=uuid, state=LIBVIRT_STATES.get(state, "unknown"),
                                      instance_id=self._instance_id(d, uuid), disks=self._disks_of(d, uuid)))
        except libvirt.libvirtError as exc:
            raise DriverError(self.id, f"libvirt at {self.uri} failed: {exc}") from exc
        if len(self._instance_ids) > len(vms):  # forget undefined domains' (a uuid is never reused)
            listed = {vm.uuid for vm in vms}
            self._instance_ids = {u: i for u, i in self._instance_ids.items() if u in listed}
            self._disks = {u: disks for u, disks in self._disks.items() if u in listed}
        if free == 0:
            free = max(0, memory_mib * 1024 - used_kib) * 1024
        return pb.HypervisorReport(
            hypervisor=self.id,
            hostname=self.hostname,
            cpus=cpus,
            memory_kib=memory_mib * 1024,
            free_memory_kib=free // 1024,
            domains=len(vms),
            running_domains=running,
            vms=vms,
            vtep=self.vtep,
        )

    def _instance_id(self, domain: Any, uuid: str) -> int:
        """The instance id in the domain's CloudLand metadata (agents/compute/domain.py), 0 if it has none:
        the reconciler removes orphans of its own only. Read once per uuid: metadata is set at define."""
        known = self._instance_ids.get(uuid)
        if known is None:
            try:
                xml = domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS)
                # libvirt hands the element back without its namespace.
                items = {i.get("key"): i.text for i in ET.fromstring(xml).iter("item")}
                known = int(items.get("instance_id") or 0)
            except (libvirt.libvirtError, ET.ParseError, ValueError):
                known = 0
            self._instance_ids[uuid] = known
        return known

    def _disks_of(self, domain: Any, uuid: str) -> list[spb.AttachedDisk]:
        """The domain's disks from its persistent definition (proto VmState.disks), read once per
        uuid and again after ``forget_disks``: disks change only by vol.* verbs, or by hand."""
        known = self._disks.get(uuid)
        if known is None:
            try:
                known = disks_of(domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            except (libvirt.libvirtError, ET.ParseError):
                known = []
            self._disks[uuid] = known
        return known

    def _age_disks(self) -> None:
        """Forget the disks read longest ago, 1/DISKS_REREAD_REPORTS of them: a disk attached by
        hand, outside any vol.* verb, is reported within that many reports, and each report reads
        only a slice of the domains (a dict keeps insertion order: the oldest reads come first).
        The slice is kept as a fraction: a hypervisor of a few domains forgets one every few
        reports, not one at every report (which read each domain's XML at every heartbeat)."""
        self._age_due += len(self._disks) / DISKS_REREAD_REPORTS
        due = min(int(self._age_due), len(self._disks))
        self._age_due -= due
        for uuid in list(islice(self._disks, due)):
            del self._disks[uuid]

    def forget_disks(self, uuid: str) -> None:
        """Read domain ``uuid``'s disks again at the next report (a vol.* verb changed them)."""
        self._disks.pop(uuid, None)

    def inventory(self) -> dict[str, Any]:
        report = self.report()
        return {
            "hostname": report.hostname,
            "cpus": report.cpus,
            "memory_kib": report.memory_kib,
            "free_memory_kib": report.free_memory_kib,
            "domains": [d.name() for d in self.conn.listAllDomains()],
        }

    def persist(self, changed: str | None = None) -> None:
        """Save a simulated hypervisor's domains (agents/simdomains.py); nothing for a real one,
        whose domains are libvirtd's. ``changed``: the one domain whose definition may have
        changed since the last save (None: any)."""
        if self.saved is not None:
            try:
                self.saved.save(self.conn, changed)
            except (libvirt.libvirtError, OSError) as exc:
                raise DriverError(self.id, f"saving the simulated domains to {self.saved.path} failed: {exc}") from exc

    def close(self) -> None:
        try:
            self.conn.close()
        except libvirt.libvirtError:
            pass


def simulated_node_xml(hypervisor_id: int) -> str:
    """A test-driver host with its own size: 16-64 CPUs, 64-256 GiB, varying by id."""
    cpus = 16 * (1 + hypervisor_id % 4)
    memory_kib = 64 * (1 + (hypervisor_id // 4) % 4) * 1024 * 1024
    node = ET.Element("node")
    cpu = ET.SubElement(node, "cpu")
    for tag, value in (("mhz", 2400), ("nodes", 1), ("sockets", 1), ("cores", cpus), ("threads", 1)):
        ET.SubElement(cpu, tag).text = str(value)
    ET.SubElement(node, "memory", unit="KiB").text = str(memory_kib)
    return ET.tostring(node, encoding="unicode")


def underlay_address(listen: str) -> str:
    """The VTEP of a host whose ranks listen on ``listen`` (its address on the network that
    reaches the root, launcher/hostd.py): that address if it is one IPv4 address, else ""."""
    try:
        address = ipaddress.IPv4Address(listen)
    except ValueError:
        return ""
    return "" if address.is_unspecified else str(address)


def open_simulated(hypervisor_id: int, state_dir: Path, vtep: str = "", saved: bool = False) -> Hypervisor:
    """Write the host file of a simulated hypervisor (once) and connect to it.

    ``saved``: its domains outlive this process (agents/simdomains.py): those saved by the last
    process that held it are defined again now, and ``persist`` saves them."""
    hosts = state_dir / "hosts"
    hosts.mkdir(parents=True, exist_ok=True)
    path = hosts / f"hv-{hypervisor_id}.xml"
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(simulated_node_xml(hypervisor_id))
        tmp.replace(path)
    hypervisor = Hypervisor(hypervisor_id, f"test://{path.resolve()}", f"sim-{hypervisor_id:05d}", state_dir,
                            vtep=vtep)
    if saved:
        hypervisor.saved = SavedDomains(hosts / f"hv-{hypervisor_id}.domains.json", hypervisor_id)
        try:
            hypervisor.saved.restore(hypervisor.conn)
        except libvirt.libvirtError as exc:
            raise DriverError(hypervisor_id, f"restoring the saved simulated domains failed: {exc}") from exc
    return hypervisor


class PerHypervisor(Generic[T]):
    """One ``T`` per Hypervisor object, made by ``make`` on first use and gone with it.

    Per object, not per id: tests open many hypervisors with the same id. What is kept
    (a driver, a console, an image cache) holds that hypervisor's locks, so every command
    on it must share the one instance.
    """

    def __init__(self, make: Callable[[Hypervisor], T]) -> None:
        self._make = make
        self._made: weakref.WeakKeyDictionary[Hypervisor, T] = weakref.WeakKeyDictionary()
        self._guard = threading.Lock()

    def __call__(self, hypervisor: Hypervisor) -> T:
        with self._guard:
            made = self._made.get(hypervisor)
            if made is None:
                made = self._made[hypervisor] = self._make(hypervisor)
            return made

    def set(self, hypervisor: Hypervisor, value: T) -> None:
        """Use ``value`` for ``hypervisor`` from now on (e.g. a fake, in tests)."""
        with self._guard:
            self._made[hypervisor] = value
