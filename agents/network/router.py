"""A VPC's distributed router on one hypervisor (issue 12): what it must be, and its namespace.

Every hypervisor with a port on one of a router's subnets runs the router in a namespace of
its own, ``<prefix>r<vpc id>`` (``NetRouter``, proto/v1/network.proto). It holds, per connected
subnet, a veth end ``g<vni>`` with the subnet's gateway address and a MAC derived from the VNI
(the same on every hypervisor, so a guest's ARP entry for its gateway is right wherever it
runs), whose other end ``<prefix>g<vni>`` is a port of the subnet's bridge; and with a gateway,
``x0`` on the external network, whose other end ``<prefix>x<vpc id>`` is a port of the operator's
provider bridge. East-west traffic is routed by the sender's hypervisor straight onto the
destination subnet's segment (no hairpin); outbound traffic is NATed here (nat.py).

The gateway MAC is the same on every host, so a routed frame arriving from another host
carries a MAC that the local bridge must not learn on its VXLAN port: the router's veth holds
a static *sticky* FDB entry for it, which learning never moves. ARP for the gateway is answered
by the local namespace, and the VXLAN device (no flooding entries, ARP proxy) never carries it
across hosts.

Conntrack: each router namespace has its own conntrack table (conntrack is per network
namespace), so two VPCs with the same CIDRs never share a flow without any zone.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from cloudland_agents.network.desired import routed_subnets
from cloudland_proto.v1 import network_pb2 as npb

ROUTER, GATEWAY, EXTERNAL = "r", "g", "x"
EXTERNAL_INSIDE = "x0"


def gateway_mac(vni: int) -> str:
    """A subnet's gateway MAC: the same on every hypervisor, locally administered, unique per VNI."""
    return "02:c0:" + ":".join(f"{b:02x}" for b in (0, vni >> 16, (vni >> 8) & 0xFF, vni & 0xFF))


def router_ns(prefix: str, vpc_id: int) -> str:
    return f"{prefix}{ROUTER}{vpc_id}"


def gateway_link(prefix: str, vni: int) -> str:
    """The host end (a port of the subnet's bridge) of the router's interface on subnet ``vni``."""
    return f"{prefix}{GATEWAY}{vni}"


def external_link(prefix: str, vpc_id: int) -> str:
    """The host end (a port of the provider bridge) of the router's external interface."""
    return f"{prefix}{EXTERNAL}{vpc_id}"


def parse(prefix: str, name: str) -> tuple[str, int] | None:
    """(kind, number) of a router object's name of this prefix, else None: the one test of
    ownership (a router namespace or a host end of its veths)."""
    match = re.fullmatch(rf"{prefix}([{ROUTER}{GATEWAY}{EXTERNAL}])([1-9][0-9]{{0,7}})", name)
    return (match[1], int(match[2])) if match else None


@dataclass(frozen=True)
class Interface:
    """The router's interface on one subnet: ``g<vni>``, its gateway address."""

    vni: int
    address: str
    prefixlen: int

    @property
    def inside(self) -> str:
        return f"{GATEWAY}{self.vni}"

    @property
    def mac(self) -> str:
        return gateway_mac(self.vni)


@dataclass(frozen=True)
class Uplink:
    """The router's interface on its external network."""

    bridge: str
    prefixlen: int
    gateway: str  # next hop, "" for none
    snat: str  # this hypervisor's source address, "" for none


@dataclass(frozen=True)
class RouterPlan:
    """Everything one VPC's router must be on this hypervisor."""

    vpc_id: int
    mtu: int
    interfaces: tuple[Interface, ...]  # by VNI
    uplink: Uplink | None
    floating: tuple[tuple[str, str], ...]  # (floating, fixed) of ports bound here, sorted

    def addresses(self) -> set[tuple[str, int]]:
        """The external interface's addresses (address, prefixlen): the SNAT one and each floating IP."""
        if self.uplink is None:
            return set()
        found = {(fip, 32) for fip, _ in self.floating}
        if self.uplink.snat:
            found.add((self.uplink.snat, self.uplink.prefixlen))
        return found


def plan_routers(held: Iterable[npb.NetVpcState], hypervisor: int) -> dict[int, RouterPlan]:
    """The routers this hypervisor must run, by VPC id: a VPC's router runs here while one of
    its ports on a connected subnet is bound here."""
    plans: dict[int, RouterPlan] = {}
    for state in held:
        if not state.HasField("router"):
            continue
        routed = routed_subnets(state, hypervisor)
        if not routed:
            continue
        router = state.router
        interfaces = []
        for subnet in state.subnets:
            if subnet.id in routed and subnet.gateway:
                network = ipaddress.IPv4Network(subnet.cidr)
                interfaces.append(Interface(subnet.vni, subnet.gateway, network.prefixlen))
        uplink, floating = None, []
        if router.HasField("external") and router.external.bridge:
            external = ipaddress.IPv4Network(router.external.cidr)
            snat = router.snat_address or next((s.address for s in router.snat_addresses
                                                if s.hypervisor == hypervisor), "")  # a multicast sync's
            uplink = Uplink(router.external.bridge, external.prefixlen, router.external.gateway, snat)
            here = {p.id: p for p in state.ports if p.hypervisor == hypervisor}
            floating = [(f.address, f.fixed_ip) for f in router.floating_ips
                        if f.port_id in here and f.fixed_ip in here[f.port_id].ips]
        plans[state.vpc_id] = RouterPlan(state.vpc_id, state.mtu or 1450, tuple(sorted(interfaces, key=lambda i: i.vni)),
                                         uplink, tuple(sorted(floating)))
    return plans
