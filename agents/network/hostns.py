"""A simulated hypervisor's own network namespace, made on demand (issue 11: ``make run``'s VMs ping).

Simulated hypervisors (libvirt ``test:///``) share their leaf's process and namespace, where
bridges of one VNI would collide. With ``CLOUDLAND_NETWORK=netns`` each one that gets a tenant
port owns a namespace ``<prefix>hv<id>`` and runs the kernel's data plane there, as a host of
the lab does in its own (reconcile.py, with ``Names.host`` set):

- its underlay is a veth pair: ``u0`` inside, holding the hypervisor's VTEP (``simulated_vtep``,
  198.18.0.0/15, the address it reports), and ``<prefix>u<id>`` outside, a port of the bridge
  ``<prefix>u`` in the leaf's namespace (the machine's), which joins every such hypervisor of the
  run: VXLAN between two of them crosses that bridge;
- the namespaces it makes beside it (DHCP servers, test guests) are named ``<prefix>hv<id>.<link>``
  (names.py ``netns``), so two hypervisors' never meet in ``/run/netns``;
- nothing exists before the first convergence with a subnet to make (``DataPlane.converge``):
  a cloud of a hundred simulated hypervisors makes namespaces for those with VMs on a network;
- the machine's provider segment reaches in: when the machine has the run's provider bridge
  ``<prefix>e`` (``cloudland up`` makes it, with an address, for its external network), each
  hypervisor namespace gets a bridge of that name too, joined to the machine's by a veth
  (``<prefix>e<id>`` outside, ``e0`` inside). That is the provider bridge an external network
  names, as a real host's is plugged into its uplink: routers plug their ``x0`` into it
  (routing.py), and the machine reaches their SNAT addresses and floating IPs across it.

Everything is made level-triggered: ``ensure`` checks each piece and makes only what is missing
or wrong, so an agent that starts again finds what its predecessor made; ``cloudland up``
removes all of a run's pieces by their prefix when it stops (cloudland/netclean.py).
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from cloudland.errors import DriverError
from cloudland.netclean import provider_bridge
from cloudland_agents.network.fake import SIMULATED_VTEPS

NETNS_DIR = Path("/run/netns")
UNDERLAY_INSIDE = "u0"
PROVIDER_INSIDE = "e0"
CLONE_NEWNET = 0x40000000
IFF_UP = 1
T = TypeVar("T")


def host_netns(prefix: str, hypervisor: int) -> str:
    """The namespace of simulated hypervisor ``hypervisor`` of the run with network prefix ``prefix``."""
    return f"{prefix}hv{hypervisor}"


def underlay_bridge(prefix: str) -> str:
    """The bridge in the machine's namespace that joins a run's simulated hypervisors."""
    return f"{prefix}u"


def underlay_port(prefix: str, hypervisor: int) -> str:
    """The machine's end of a simulated hypervisor's underlay veth (at most 6 + 1 + 8 characters)."""
    return f"{prefix}u{hypervisor}"


def provider_port(prefix: str, hypervisor: int) -> str:
    """The machine's end of a simulated hypervisor's veth onto the provider bridge."""
    return f"{prefix}e{hypervisor}"


def netns_id(name: str) -> tuple[int, int] | None:
    """Which namespace ``name`` is now (device, inode), None if there is none of that name."""
    try:
        st = os.stat(NETNS_DIR / name)
    except OSError:
        return None
    return st.st_dev, st.st_ino


_libc = ctypes.CDLL(None, use_errno=True)


def in_netns(name: str, call: Callable[[], T]) -> T:
    """``call()`` on a thread that entered network namespace ``name`` (setns acts on one thread):
    what it opens under /proc/sys/net is that namespace's."""
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            fd = os.open(NETNS_DIR / name, os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns into {name}: {os.strerror(errno)}")
            finally:
                os.close(fd)
            result.append(call())
        except BaseException as exc:  # noqa: BLE001 - raised again on the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"in-{name}")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


class HostNamespace:
    """Simulated hypervisor ``hypervisor``'s namespace and underlay (module docstring)."""

    def __init__(self, hypervisor: int, prefix: str, vtep: str) -> None:
        self.hypervisor = hypervisor
        self.prefix = prefix
        self.name = host_netns(prefix, hypervisor)
        self.vtep = vtep
        self._machine: IPRoute | None = None

    def close(self) -> None:
        if self._machine is not None:
            self._machine.close()
            self._machine = None

    def present(self) -> tuple[int, int] | None:
        return netns_id(self.name)

    def ensure_namespace(self) -> int:
        """The namespace exists (made if not); 1 if it was made."""
        if self.present() is not None:
            return 0
        try:
            netns.create(self.name)
        except OSError as exc:
            raise DriverError(self.hypervisor, f"cannot make namespace {self.name}: {exc}") from exc
        return 1

    def ensure_underlay(self, inside: IPRoute) -> int:
        """The underlay bridge, the veth pair on it, and the VTEP on ``u0`` (``inside`` is a handle
        in the namespace), each made or corrected; the count of what was."""
        made = 0
        bridge, port = underlay_bridge(self.prefix), underlay_port(self.prefix, self.hypervisor)
        try:
            if self._machine is None:
                self._machine = IPRoute()
            machine = self._machine
            found = machine.link_lookup(ifname=bridge)
            if not found:
                try:
                    # Its frames are the underlay's, not a tenant's: the machine's firewall keeps off them.
                    machine.link("add", ifname=bridge, kind="bridge", br_stp_state=0, br_nf_call_iptables=0)
                    made += 1
                except NetlinkError as exc:
                    if exc.code != 17:  # EEXIST: another hypervisor of the leaf made it just now
                        raise
                found = machine.link_lookup(ifname=bridge)
            (bridge_link,) = machine.get_links(found[0])
            if not bridge_link["flags"] & IFF_UP:
                machine.link("set", index=found[0], state="up")
                made += 1
            made += self._veth_onto(machine, found[0], port, UNDERLAY_INSIDE)
            made += self._ensure_inside(inside)
        except (NetlinkError, OSError, ValueError) as exc:
            raise DriverError(self.hypervisor, f"cannot make the underlay of namespace {self.name} "
                                               f"({port} on {bridge}): {exc}") from exc
        return made

    def ensure_provider(self, inside: IPRoute) -> int:
        """The run's provider bridge in the namespace, joined to the machine's by a veth, when the
        machine has one (the module's docstring); the count of what was made or corrected. Made
        only, never removed: it goes with the namespace, as a host's provider bridge is the operator's."""
        bridge, port = provider_bridge(self.prefix), provider_port(self.prefix, self.hypervisor)
        try:
            if self._machine is None:
                self._machine = IPRoute()
            found = self._machine.link_lookup(ifname=bridge)
            if not found:
                return 0  # this run has no external network on the machine
            made = self._veth_onto(self._machine, found[0], port, PROVIDER_INSIDE)
            here = inside.link_lookup(ifname=bridge)
            if not here:
                inside.link("add", ifname=bridge, kind="bridge", br_stp_state=0)
                here = inside.link_lookup(ifname=bridge)
                made += 1
            for name, master in ((bridge, None), (PROVIDER_INSIDE, here[0])):
                (link,) = inside.get_links(inside.link_lookup(ifname=name)[0])
                if not link["flags"] & IFF_UP or (master is not None and link.get("master") != master):
                    inside.link("set", index=link["index"], state="up", **({"master": master} if master else {}))
                    made += 1
        except (NetlinkError, OSError, ValueError, IndexError) as exc:
            raise DriverError(self.hypervisor, f"cannot join namespace {self.name} to the machine's provider "
                                               f"bridge {bridge} ({port}): {exc}") from exc
        return made

    def _veth_onto(self, machine: IPRoute, bridge: int, port: str, peer: str) -> int:
        """The veth ``port`` (the machine's end, a port of ``bridge``) to ``peer`` in the namespace,
        made or corrected; the count of what was."""
        made = 0
        outside = machine.link_lookup(ifname=port)
        if not outside:
            machine.link("add", ifname=port, kind="veth", peer={"ifname": peer, "net_ns_fd": self.name})
            outside = machine.link_lookup(ifname=port)
            made += 1
        (link,) = machine.get_links(outside[0])
        if link.get("master") != bridge or not link["flags"] & IFF_UP:
            machine.link("set", index=outside[0], master=bridge, state="up")
            made += 1
        return made

    def _ensure_inside(self, inside: IPRoute) -> int:
        made = 0
        for name in ("lo", UNDERLAY_INSIDE):
            index = inside.link_lookup(ifname=name)
            if not index:
                raise ValueError(f"no {name} inside")
            (link,) = inside.get_links(index[0])
            if not link["flags"] & IFF_UP:
                inside.link("set", index=index[0], state="up")
                made += 1
        index = inside.link_lookup(ifname=UNDERLAY_INSIDE)[0]
        want = (self.vtep, SIMULATED_VTEPS.prefixlen)
        ipaddress.IPv4Address(self.vtep)  # ValueError: a simulated hypervisor without its own VTEP
        have = {(a.get("address"), a["prefixlen"]) for a in inside.get_addr(index=index, family=2)}
        if want not in have:
            inside.addr("add", index=index, address=want[0], prefixlen=want[1])
            made += 1
        for address, prefixlen in have - {want}:
            inside.addr("del", index=index, address=address, prefixlen=prefixlen)
            made += 1
        return made
