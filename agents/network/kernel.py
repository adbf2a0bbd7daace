"""The kernel's side of the data plane, through pyroute2: links, FDB and neighbour entries.

One ``IPRoute`` handle per agent, kept open (each handle in another namespace forks a helper,
shared/reference/networking-on-this-machine.md). Only links whose name ``Names.parse`` accepts
are read back, so nothing of another owner is ever seen, let alone changed. NetlinkError is
translated here into DriverError naming the object.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import ndmsg

from cloudland.errors import DriverError
from cloudland_agents.network.hostns import in_netns
from cloudland_agents.network.names import VXLAN, Names

VXLAN_PORT = 4789
IFF_UP = 1
PERMANENT = ndmsg.states["permanent"]
FDB_STATE = PERMANENT | ndmsg.states["noarp"]
SELF = ndmsg.flags["self"]
T = TypeVar("T")


@dataclass(frozen=True)
class Link:
    """One of our links as the kernel has it."""

    name: str
    kind: str  # Names' kind letter
    vni: int
    index: int
    mtu: int
    up: bool
    master: int  # index of its bridge, 0 for none
    vxlan: tuple[Any, ...] = ()  # (vni, local, port, learning, proxy) of a VXLAN device


# A tenant's bridge and VXLAN device are no interfaces of the host: no IPv6 link-local address on
# them, and no ARP answer for the host's own addresses (arp_ignore 8), so a guest cannot reach the
# host through its subnet. Further filtering is the security groups' (nftables).
SYSCTLS = (("ipv6", "disable_ipv6", "1"), ("ipv4", "arp_ignore", "8"))


def vxlan_settings(vni: int, local: str) -> tuple[Any, ...]:
    """What a VXLAN device of ours must say about itself (``Link.vxlan``)."""
    return (vni, local or None, VXLAN_PORT, 0, 1)


class Kernel:
    """The links and entries of one network namespace: the agent's own (the host's), or the
    simulated hypervisor's own, ``names.host`` (hostns.py), which must exist."""

    def __init__(self, hypervisor: int, names: Names) -> None:
        self.hypervisor = hypervisor
        self.names = names
        self.ipr = IPRoute(netns=names.host, flags=0) if names.host else IPRoute()

    def close(self) -> None:
        self.ipr.close()

    @contextmanager
    def _doing(self, what: str) -> Iterator[None]:
        try:
            yield
        except NetlinkError as exc:
            raise DriverError(self.hypervisor, f"cannot {what}: {exc}") from exc

    def _call(self, what: str, call: Callable[[], T]) -> T:
        with self._doing(what):
            return call()

    # -- reading ----------------------------------------------------------------------------

    def links(self) -> dict[str, Link]:
        """Our links, by name."""
        found: dict[str, Link] = {}
        for msg in self._call("list links", self.ipr.get_links):
            name = msg.get("ifname") or ""
            parsed = self.names.parse(name)
            if parsed is None:
                continue
            kind, vni = parsed
            settings: tuple[Any, ...] = ()
            if kind == VXLAN:
                data = msg.get(("linkinfo", "data"))
                get = (lambda key: data.get(key)) if data is not None else (lambda key: None)
                settings = (get("vxlan_id"), get("vxlan_local"), get("vxlan_port"), get("vxlan_learning"),
                            get("vxlan_proxy"))
            found[name] = Link(name, kind, vni, msg["index"], msg.get("mtu") or 0, bool(msg["flags"] & IFF_UP),
                               msg.get("master") or 0, settings)
        return found

    def fdb(self, indexes: set[int]) -> dict[int, dict[str, str]]:
        """Static unicast entries (MAC -> VTEP) on these VXLAN devices, by device index. Entries
        without a destination (the bridge's own, for its port) are not ours."""
        found: dict[int, dict[str, str]] = {index: {} for index in indexes}
        for msg in self._call("list FDB entries", lambda: self.ipr.fdb("dump")):
            index = msg["ifindex"]
            dst = msg.get("dst")
            if index in found and dst:
                found[index][msg.get("lladdr")] = dst
        return found

    def neighbours(self, indexes: set[int]) -> dict[int, dict[str, str]]:
        """Permanent IPv4 neighbour entries (IP -> MAC) on these devices, by device index."""
        found: dict[int, dict[str, str]] = {index: {} for index in indexes}
        dump = self._call("list neighbours", lambda: self.ipr.get_neighbours(family=socket.AF_INET))
        for msg in dump:
            index = msg["ifindex"]
            if index in found and msg["state"] & PERMANENT and msg.get("lladdr"):
                found[index][msg.get("dst")] = msg.get("lladdr")
        return found

    # -- changing ---------------------------------------------------------------------------

    def add_bridge(self, vni: int, mtu: int) -> int:
        name = self.names.bridge(vni)
        with self._doing(f"create bridge {name}"):
            self.ipr.link("add", ifname=name, kind="bridge", mtu=mtu, br_stp_state=0)
            index = int(self.ipr.link_lookup(ifname=name)[0])
            self.ipr.link("set", index=index, state="up")
        return index

    def add_vxlan(self, vni: int, local: str, mtu: int, bridge: int) -> int:
        """The subnet's VXLAN device: no learning, ARP answered from its neighbour entries (proxy)."""
        name = self.names.vxlan(vni)
        settings: dict[str, Any] = {"vxlan_id": vni, "vxlan_port": VXLAN_PORT, "vxlan_learning": 0, "vxlan_proxy": 1}
        if local:
            settings["vxlan_local"] = local
        with self._doing(f"create VXLAN device {name} (vni {vni}, local {local or 'any'})"):
            self.ipr.link("add", ifname=name, kind="vxlan", mtu=mtu, **settings)
            index = int(self.ipr.link_lookup(ifname=name)[0])
            self.ipr.link("set", index=index, master=bridge, state="up")
        return index

    def set_link(self, link: Link, **changes: Any) -> None:
        """Change ``mtu``, ``master`` or ``state`` of one of our links in place."""
        self._call(f"set {', '.join(changes)} of {link.name}", lambda: self.ipr.link("set", index=link.index, **changes))

    def delete_link(self, name: str, index: int) -> None:
        with self._doing(f"delete {name}"):
            try:
                self.ipr.link("del", index=index)
            except NetlinkError as exc:
                if exc.code != 19:  # ENODEV: gone already (a veth deleted with its peer)
                    raise

    def put_fdb(self, index: int, mac: str, vtep: str) -> None:
        """MAC -> VTEP, replacing an entry of that MAC to another VTEP (a port that moved)."""
        self._call(f"add FDB entry {mac} -> {vtep}",
                   lambda: self.ipr.fdb("replace", ifindex=index, lladdr=mac, dst=vtep, state=FDB_STATE, flags=SELF))

    def delete_fdb(self, index: int, mac: str, vtep: str) -> None:
        with self._doing(f"delete FDB entry {mac} -> {vtep}"):
            try:
                self.ipr.fdb("del", ifindex=index, lladdr=mac, dst=vtep)
            except NetlinkError as exc:
                if exc.code != 2:  # ENOENT: replaced meanwhile
                    raise

    def put_neighbour(self, index: int, ip: str, mac: str) -> None:
        self._call(f"add neighbour {ip} -> {mac}",
                   lambda: self.ipr.neigh("replace", ifindex=index, dst=ip, lladdr=mac, state=PERMANENT))

    def delete_neighbour(self, index: int, ip: str) -> None:
        with self._doing(f"delete neighbour {ip}"):
            try:
                self.ipr.neigh("del", ifindex=index, dst=ip)
            except NetlinkError as exc:
                if exc.code != 2:
                    raise

    def isolate(self, name: str) -> bool:
        """Apply SYSCTLS to our link ``name`` (in the agent's namespace: /proc/sys is its view;
        in the hypervisor's own, from a thread that entered it); whether anything was wrong."""
        if self.names.host:
            return in_netns(self.names.host, lambda: self._isolate(name))
        return self._isolate(name)

    def _isolate(self, name: str) -> bool:
        changed = False
        for family, key, value in SYSCTLS:
            path = f"/proc/sys/net/{family}/conf/{name}/{key}"
            try:
                with open(path, "r+") as file:
                    if file.read().strip() != value:
                        file.seek(0)
                        file.write(value)
                        changed = True
            except OSError as exc:
                raise DriverError(self.hypervisor, f"cannot set {family} {key}={value} on {name}: {exc}") from exc
        return changed
