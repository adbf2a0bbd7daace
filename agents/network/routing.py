"""The routers of one hypervisor in the kernel (issue 12): namespaces, veths, addresses, routes,
NAT; level-triggered like the subnets (reconcile.py).

``Routers.converge(plans)`` reads what is there (our router namespaces by name, their links,
addresses and default route, the host ends of their veths, the sticky FDB entries of the gateway
MACs, the nftables table as text), makes what is missing or wrong right, then removes routers
and links no plan wants. What is right is left alone: a restarted agent that converges what its
predecessor made changes nothing, and NATed flows never notice (tests/network/test_routers.py).
It runs after the subnets' convergence, which made the bridges it plugs into.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import ndmsg

from cloudland.errors import DriverError
from cloudland_agents.network import nat
from cloudland_agents.network.dhcp import NETNS_DIR, Changes
from cloudland_agents.network.kernel import IFF_UP, Kernel
from cloudland_agents.network.names import Names
from cloudland_agents.network.router import (
    EXTERNAL,
    EXTERNAL_INSIDE,
    GATEWAY,
    ROUTER,
    RouterPlan,
    external_link,
    gateway_link,
    parse,
    router_ns,
)

NTF_MASTER, NTF_STICKY = ndmsg.flags["master"], 0x40
STATIC = ndmsg.states["noarp"]
T = TypeVar("T")
log = logging.getLogger(__name__)


def in_netns(name: str, call: Callable[[], T]) -> T:
    """``call()`` on a thread of its own that entered network namespace ``name`` (setns is per
    thread, and the thread ends with the call): /proc/sys/net is that namespace's there."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            netns.setns(name, flags=0, fork=False)
            box["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=run, name=f"netns-{name}")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def _forwarding() -> bool:
    """Make sure IPv4 forwarding is on in the calling thread's namespace; whether it was off."""
    path = Path("/proc/sys/net/ipv4/ip_forward")
    if path.read_text().strip() == "1":
        return False
    path.write_text("1")
    return True


def gratuitous_arp(namespace: str, ifname: str, mac: str, address: str) -> None:
    """One gratuitous ARP request for ``address`` from ``ifname`` (issue 12: a floating IP that
    arrived here, so the segment's switches and neighbours learn where it is now)."""
    sock = netns.create_socket(namespace, family=socket.AF_PACKET, socket_type=socket.SOCK_RAW, flags=0)
    try:
        sock.bind((ifname, 0))
        src = bytes.fromhex(mac.replace(":", ""))
        ip = socket.inet_aton(address)
        frame = b"\xff" * 6 + src + struct.pack("!H", 0x0806)
        frame += struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + src + ip + b"\0" * 6 + ip
        sock.send(frame)
    finally:
        sock.close()


def forget_flows(namespace: str, address: str) -> None:
    """Delete the router's conntrack entries to or from ``address`` (a floating IP that left): a
    flow through it must not go on by its old translation once it is disassociated."""
    for option in ("--orig-dst", "--reply-dst"):
        subprocess.run(["nsenter", f"--net=/run/netns/{namespace}", "conntrack", "-D", option, address],
                       capture_output=True, timeout=10)  # exit 1: there was none


class Routers:
    """The router namespaces of one hypervisor, beside its subnets (``DataPlane``)."""

    def __init__(self, hypervisor: int, names: Names, kernel: Callable[[], Kernel]) -> None:
        self.hypervisor = hypervisor
        self.prefix = names.prefix
        self.names = names
        # The data plane's kernel handle, opened at first use: a simulated hypervisor's own
        # namespace (hostns.py) is made only when it first holds a subnet.
        self._kernel = kernel
        self._inside: dict[int, IPRoute] = {}  # per VPC, a handle in its router namespace

    @property
    def kernel(self) -> Kernel:
        return self._kernel()

    @property
    def host(self) -> IPRoute:
        return self.kernel.ipr

    def close(self) -> None:
        for handle in self._inside.values():
            handle.close()
        self._inside.clear()

    def _fail(self, what: str, exc: Exception) -> DriverError:
        return DriverError(self.hypervisor, f"cannot {what}: {exc}")

    # -- reading ----------------------------------------------------------------------------

    def present(self) -> set[int]:
        """VPCs that have a router namespace of ours here."""
        names = os.listdir(NETNS_DIR) if NETNS_DIR.is_dir() else []
        links = (self.names.link_of_netns(n) for n in names)
        return {parsed[1] for parsed in (parse(self.prefix, n) for n in links if n) if parsed and parsed[0] == ROUTER}

    def namespace(self, vpc_id: int) -> str:
        """The router namespace of VPC ``vpc_id``, scoped to this hypervisor's own namespace when it
        has one (a simulated hypervisor of `make run`: Names.netns)."""
        return self.names.netns(router_ns(self.prefix, vpc_id))

    def _host_links(self) -> dict[str, Any]:
        found = {}
        for msg in self.host.get_links():
            name = msg.get("ifname") or ""
            parsed = parse(self.prefix, name)
            if parsed is not None and parsed[0] in (GATEWAY, EXTERNAL):
                found[name] = msg
        return found

    # -- converging -------------------------------------------------------------------------

    def converge(self, plans: dict[int, RouterPlan], only: set[int] | None = None) -> Changes:
        """Make the routers exactly ``plans``; with ``only``, look at those VPCs' routers alone (an
        apply or a sync of some VPCs: its cost follows the change, not the hypervisor's routers)."""
        changes = Changes()
        present = self.present()
        host = self._host_links()
        for vpc_id, plan in sorted(plans.items()):
            if only is not None and vpc_id not in only:
                continue
            try:
                self._ensure(plan, vpc_id in present, host, changes)
            except (NetlinkError, OSError) as exc:
                raise self._fail(f"make the router of vpc {vpc_id} ({self.namespace(vpc_id)})", exc) from exc
        for vpc_id in sorted(present - set(plans)):
            if only is not None and vpc_id not in only:
                continue
            try:
                # Its veths' host ends first, while the namespace proves them ours: the kernel
                # deletes them with the namespace, but later (its teardown is asynchronous), and
                # a host end still there below would have no namespace to prove it ours.
                host_ends = self._peers_in(vpc_id)
                for name, msg in host.items():
                    if msg["index"] in host_ends:
                        self.kernel.delete_link(name, msg["index"])
                handle = self._inside.pop(vpc_id, None)
                if handle is not None:
                    handle.close()
                netns.remove(self.namespace(vpc_id))
            except (NetlinkError, OSError) as exc:
                raise self._fail(f"remove the router namespace of vpc {vpc_id}", exc) from exc
            changes.removed += 1
        if only is not None:
            return changes  # stray host ends (their router gone under them) wait for a whole convergence
        wanted = {gateway_link(self.prefix, i.vni) for p in plans.values() for i in p.interfaces}
        wanted |= {external_link(self.prefix, p.vpc_id) for p in plans.values() if p.uplink is not None}
        strays = {name: msg for name, msg in self._host_links().items() if name not in wanted}
        ours = self._peers_of_routers() if strays else set()
        for name, msg in strays.items():
            if msg["index"] in ours:
                self.kernel.delete_link(name, msg["index"])
                changes.removed += 1
            else:  # a name of our shape, but not our veth: someone else's to keep
                log.warning("event=foreign_link_kept hypervisor=%d link=%s", self.hypervisor, name)
        return changes

    def _peers_of_routers(self) -> set[int]:
        """The host-side indices of the veths whose other end is in one of our router namespaces:
        the proof that a host link of the router's name shape (``<prefix>g<n>``, ``<prefix>x<n>``)
        is ours to delete. Its name alone is no proof: another program (a test guest of old,
        before its rename) may own a link of that name, and a respawned agent deleted it."""
        found: set[int] = set()
        for vpc_id in self.present():
            found |= self._peers_in(vpc_id)
        return found

    def _peers_in(self, vpc_id: int) -> set[int]:
        """The host-side indices of the veths whose other end is in ``vpc_id``'s router namespace."""
        found: set[int] = set()
        for msg in self._handle(vpc_id, existed=True).get_links():
            peer, netnsid = msg.get_attr("IFLA_LINK"), msg.get_attr("IFLA_LINK_NETNSID")
            # A veth end whose peer is in another namespace; ours are made in this
            # hypervisor's own (the router namespaces are scoped to it: Names.netns).
            if peer and netnsid is not None and (msg.get("ifname") == EXTERNAL_INSIDE
                                                 or parse("", msg.get("ifname") or "")):
                found.add(int(peer))
        return found

    def _foreign(self, name: str, msg: Any) -> DriverError:
        return DriverError(self.hypervisor, f"link {name} (index {msg['index']}) has the name of a router's veth but "
                                            "its peer is in no router namespace of ours: not deleting it; "
                                            "remove or rename it")

    def _handle(self, vpc_id: int, existed: bool) -> IPRoute:
        name = self.namespace(vpc_id)
        handle = self._inside.get(vpc_id)
        if existed and handle is not None:
            return handle
        if handle is not None:  # a handle on a namespace removed behind our back
            handle.close()
        if not existed:
            netns.create(name)
        handle = self._inside[vpc_id] = IPRoute(netns=name, flags=0)
        return handle

    def _ensure(self, plan: RouterPlan, existed: bool, host: dict[str, Any], changes: Changes) -> None:
        ns_name = self.namespace(plan.vpc_id)
        inside = self._handle(plan.vpc_id, existed)
        changes.added += 0 if existed else 1
        links = {msg.get("ifname"): msg for msg in inside.get_links()}
        lo = links["lo"]
        if not lo["flags"] & IFF_UP:
            inside.link("set", index=lo["index"], state="up")
            changes.added += 1
        if in_netns(ns_name, _forwarding):
            changes.added += 1
        for interface in plan.interfaces:
            bridge = self._bridge(self.names.bridge(interface.vni))
            index = self._veth(ns_name, inside, links, host, gateway_link(self.prefix, interface.vni), interface.inside,
                               interface.mac, plan.mtu, bridge, changes)
            self._addresses(inside, index, {(interface.address, interface.prefixlen)}, changes)
            self._sticky(gateway_link(self.prefix, interface.vni), interface.mac, changes)
        wanted_inside = {i.inside for i in plan.interfaces}
        gone: set[str] = set()
        if plan.uplink is not None:
            uplink = plan.uplink
            bridge = self._bridge(uplink.bridge)
            index = self._veth(ns_name, inside, links, host, external_link(self.prefix, plan.vpc_id), EXTERNAL_INSIDE, "",
                               0, bridge, changes)
            added, gone = self._addresses(inside, index, plan.addresses(), changes)
            self._default_route(inside, index, uplink.gateway, changes)
            mac = inside.get_links(index)[0].get("address")
            for address in sorted(added & {fip for fip, _ in plan.floating}):
                gratuitous_arp(ns_name, EXTERNAL_INSIDE, mac, address)
            wanted_inside.add(EXTERNAL_INSIDE)
        for name, msg in links.items():
            if name != "lo" and name not in wanted_inside:
                inside.link("del", index=msg["index"])  # its host end goes with it
                changes.removed += 1
        wanted = nat.ruleset(plan)
        if nat.current(ns_name, self.hypervisor) == wanted:
            changes.unchanged += 1
        else:
            nat.replace(ns_name, self.hypervisor, wanted)
            changes.added += 1
        for address in sorted(gone):  # after the rules: a flow's next packet cannot set it up again
            forget_flows(ns_name, address)

    def _bridge(self, name: str) -> int:
        found = self.host.link_lookup(ifname=name)
        if not found:
            raise DriverError(self.hypervisor, f"bridge {name} is missing (the subnet's, or the external network's "
                                               "provider bridge, which the operator attaches to its uplink)")
        return int(found[0])

    def _veth(self, ns_name: str, inside: IPRoute, links: dict[str, Any], host: dict[str, Any], outer: str, inner: str, mac: str,
              mtu: int, bridge: int, changes: Changes) -> int:
        """The veth ``outer`` (host, a port of ``bridge``) to ``inner`` (in the router), made or
        corrected; the index of ``inner``. ``mac``/``mtu`` of the inner end; "" and 0: any."""
        msg_in, msg_out = links.get(inner), host.get(outer)
        if msg_out is not None and msg_in is not None and msg_in.get_attr("IFLA_LINK") != msg_out["index"]:
            # Both names exist but are not one veth: the host end is not ours (our pair is made whole).
            raise self._foreign(outer, msg_out)
        if msg_in is None or msg_out is None:
            if msg_out is not None and msg_out["index"] not in self._peers_of_routers():
                raise self._foreign(outer, msg_out)
            for msg, handle in ((msg_in, inside), (msg_out, self.host)):
                if msg is not None:
                    handle.link("del", index=msg["index"])
                    changes.removed += 1
            peer: dict[str, Any] = {"ifname": inner, "net_ns_fd": ns_name}
            if mac:
                peer["address"] = mac
            extra = {"mtu": mtu} if mtu else {}
            if mtu:
                peer["mtu"] = mtu
            self.host.link("add", ifname=outer, kind="veth", peer=peer, **extra)
            out_index = int(self.host.link_lookup(ifname=outer)[0])
            self.host.link("set", index=out_index, master=bridge, state="up")
            self.kernel.isolate(outer)
            in_index = int(inside.link_lookup(ifname=inner)[0])
            inside.link("set", index=in_index, state="up")
            changes.added += 1
            return in_index
        fixes_out: dict[str, Any] = {}
        if msg_out.get("master") != bridge:
            fixes_out["master"] = bridge
        if mtu and msg_out.get("mtu") != mtu:
            fixes_out["mtu"] = mtu
        if not msg_out["flags"] & IFF_UP:
            fixes_out["state"] = "up"
        fixes_in: dict[str, Any] = {}
        if mac and msg_in.get("address") != mac:
            fixes_in["address"] = mac
        if mtu and msg_in.get("mtu") != mtu:
            fixes_in["mtu"] = mtu
        if not msg_in["flags"] & IFF_UP:
            fixes_in["state"] = "up"
        if fixes_out:
            self.host.link("set", index=msg_out["index"], **fixes_out)
        if fixes_in:
            inside.link("set", index=msg_in["index"], **fixes_in)
        if self.kernel.isolate(outer) or fixes_in or fixes_out:
            changes.added += 1
        else:
            changes.unchanged += 1
        return int(msg_in["index"])

    @staticmethod
    def _addresses(inside: IPRoute, index: int, wanted: set[tuple[str, int]],
                   changes: Changes) -> tuple[set[str], set[str]]:
        """Exactly ``wanted`` (address, prefixlen) on link ``index``; the addresses added, and removed."""
        have = {(m.get_attr("IFA_ADDRESS"), m["prefixlen"]) for m in inside.get_addr(index=index, family=socket.AF_INET)}
        for address, prefixlen in sorted(wanted - have):
            inside.addr("add", index=index, address=address, prefixlen=prefixlen)
            changes.added += 1
        for address, prefixlen in sorted(have - wanted):
            inside.addr("del", index=index, address=address, prefixlen=prefixlen)
            changes.removed += 1
        changes.unchanged += len(wanted & have)
        return {address for address, _ in wanted - have}, {address for address, _ in have - wanted}

    @staticmethod
    def _default_route(inside: IPRoute, index: int, gateway: str, changes: Changes) -> None:
        routes = [r for r in inside.get_routes(family=socket.AF_INET, table=254) if r["dst_len"] == 0]
        have = {(r.get_attr("RTA_GATEWAY"), r.get_attr("RTA_OIF")) for r in routes}
        if not gateway:
            for route in routes:
                inside.route("del", dst="0.0.0.0/0", gateway=route.get_attr("RTA_GATEWAY"))
                changes.removed += 1
            return
        if have == {(gateway, index)}:
            changes.unchanged += 1
            return
        inside.route("replace", dst="0.0.0.0/0", gateway=gateway, oif=index)
        changes.added += 1

    def _sticky(self, port: str, mac: str, changes: Changes) -> None:
        """A static sticky FDB entry of the gateway MAC on the router's bridge port: the bridge never
        learns it from a routed frame of another host (the same MAC), so it stays local."""
        index = int(self.host.link_lookup(ifname=port)[0])
        for msg in self.host.fdb("dump", ifindex=index):
            if (msg.get("lladdr") == mac and msg["ifindex"] == index and msg["flags"] & NTF_STICKY
                    and msg["state"] & STATIC):
                changes.unchanged += 1
                return
        self.host.fdb("replace", ifindex=index, lladdr=mac, state=STATIC, flags=NTF_MASTER | NTF_STICKY)
        changes.added += 1
