"""Address arithmetic of tenant subnets, apart from the database: pure, tested by tables.

A subnet is an IPv4 network of /8 to /29. Its host addresses exclude the network and broadcast
addresses; its gateway is one of them (the first by default) and is never handed out, nor, while
DHCP is on, the DHCP server's (the last usable address, where every hypervisor's server of the
subnet answers: proto/v1/network.proto ``NetSubnet.dhcp_address``); its
allocation pools are inclusive ranges of host addresses (every host address by default), and
the allocator hands out the lowest free addresses of the pools, in pool order. Every error is
InvalidRequest naming the values (api/README.md "Errors": 400).
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from cloudland.errors import InvalidRequest

MIN_PREFIX, MAX_PREFIX = 8, 29
MAC_PREFIX = "02:c1"  # locally administered, unicast: never a vendor's address


def network(cidr: str) -> IPv4Network:
    """``cidr`` as an IPv4 network of /8../29; InvalidRequest when it is not one (host bits set, say)."""
    if "/" not in cidr:
        raise InvalidRequest(f"cidr {cidr!r} has no prefix length: write it as ADDRESS/PREFIX, e.g. 10.0.0.0/24")
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError as exc:
        raise InvalidRequest(f"cidr {cidr!r} is not an IPv4 network: {exc}") from exc
    if not isinstance(net, IPv4Network):
        raise InvalidRequest(f"cidr {cidr!r}: only IPv4 subnets are supported")
    if str(net) != cidr:
        raise InvalidRequest(f"cidr {cidr!r} is not a network (host bits are set): did you mean {net}?")
    if not MIN_PREFIX <= net.prefixlen <= MAX_PREFIX:
        raise InvalidRequest(f"cidr {cidr!r}: the prefix must be /{MIN_PREFIX} to /{MAX_PREFIX}")
    return net


def address(text: str, what: str) -> IPv4Address:
    """``text`` as an IPv4 address; InvalidRequest naming ``what`` otherwise."""
    try:
        return IPv4Address(text)
    except ValueError as exc:
        raise InvalidRequest(f"{what} {text!r} is not an IPv4 address") from exc


def host_in(net: IPv4Network, addr: IPv4Address, what: str) -> IPv4Address:
    """``addr`` if it is a host address of ``net``; InvalidRequest naming ``what`` otherwise."""
    if addr not in net:
        raise InvalidRequest(f"{what} {addr} is outside {net}")
    if addr in (net.network_address, net.broadcast_address):
        raise InvalidRequest(f"{what} {addr} is the {'network' if addr == net.network_address else 'broadcast'} "
                             f"address of {net}, not a host address")
    return addr


def dhcp_server(net: IPv4Network) -> IPv4Address:
    """Where a subnet's DHCP and DNS server answers on every hypervisor: its last usable address
    (proto/v1/network.proto ``NetSubnet.dhcp_address`` left empty). Never a port's while DHCP is on."""
    return net.broadcast_address - 1


@dataclass(frozen=True)
class Layout:
    """A subnet's checked addresses: its network, gateway (or None), pools (first, last) and
    whether DHCP is on (its server then holds ``dhcp_server``)."""

    net: IPv4Network
    gateway: IPv4Address | None
    pools: tuple[tuple[IPv4Address, IPv4Address], ...]
    dhcp: bool = False

    @property
    def reserved(self) -> dict[IPv4Address, str]:
        """The addresses never handed out, with what holds them."""
        held = {self.gateway: "the gateway"} if self.gateway is not None else {}
        if self.dhcp:
            held[dhcp_server(self.net)] = "the DHCP server's address"
        return held

    def in_pools(self, addr: IPv4Address) -> bool:
        return any(first <= addr <= last for first, last in self.pools)

    @property
    def capacity(self) -> int:
        """How many addresses the pools hold, the reserved ones left out."""
        size = sum(int(last) - int(first) + 1 for first, last in self.pools)
        return size - sum(1 for addr in self.reserved if self.in_pools(addr))

    def stored_pools(self) -> list[list[str]]:
        return [[str(first), str(last)] for first, last in self.pools]


def layout(cidr: str, gateway: str | None, default_gateway: bool,
           pools: Sequence[tuple[str, str]] | None, dhcp: bool = False) -> Layout:
    """Check a subnet's addresses: ``gateway`` (``default_gateway``: none was given, take the first
    host), ``pools`` (None: every host address) inside the network, in order and not overlapping;
    with ``dhcp``, the gateway is not the DHCP server's address."""
    net = network(cidr)
    first_host, last_host = net.network_address + 1, net.broadcast_address - 1
    gw = first_host if default_gateway else (
        host_in(net, address(gateway, "gateway"), "gateway") if gateway is not None else None)
    ranges: list[tuple[IPv4Address, IPv4Address]] = []
    for start, end in pools if pools is not None else [(str(first_host), str(last_host))]:
        low = host_in(net, address(start, "pool start"), "pool start")
        high = host_in(net, address(end, "pool end"), "pool end")
        if low > high:
            raise InvalidRequest(f"pool {low}-{high}: the start is after the end")
        ranges.append((low, high))
    ranges.sort()
    for (_, previous_end), (start_, end_) in zip(ranges, ranges[1:]):
        if start_ <= previous_end:
            raise InvalidRequest(f"pool {start_}-{end_} overlaps another pool (ending at {previous_end})")
    if dhcp and gw is not None and gw == dhcp_server(net):
        raise InvalidRequest(f"gateway {gw} is the DHCP server's address of {net} (its last usable one): "
                             "choose another gateway, or turn DHCP off")
    found = Layout(net, gw, tuple(ranges), dhcp)
    if found.capacity < 1:
        raise InvalidRequest(f"the pools of {net} hold no address to hand out")
    return found


def stored_layout(cidr: str, gateway: str | None, pools: Iterable[Sequence[str]], dhcp: bool) -> Layout:
    """The layout of a subnet as stored (already checked)."""
    return Layout(IPv4Network(cidr), IPv4Address(gateway) if gateway else None,
                  tuple((IPv4Address(first), IPv4Address(last)) for first, last in pools), dhcp)


def allocate(subnet: Layout, taken: set[str], count: int) -> list[str] | None:
    """The ``count`` lowest free addresses of the pools, in pool order, or None if fewer are free.

    Costs O(taken + count): a walk skips only addresses that are taken.
    """
    found: list[str] = []
    skip = set(taken) | {str(addr) for addr in subnet.reserved}
    for first, last in subnet.pools:
        current, end = int(first), int(last)
        while current <= end:
            text = str(IPv4Address(current))
            if text not in skip:
                found.append(text)
                if len(found) == count:
                    return found
            current += 1
    return None


def free(subnet: Layout, taken: set[str]) -> int:
    """How many addresses of the pools are neither taken nor reserved."""
    used = sum(1 for text in taken if subnet.in_pools(IPv4Address(text)) and IPv4Address(text) not in subnet.reserved)
    return subnet.capacity - used


def requested(subnet: Layout, wanted: Sequence[str]) -> list[str]:
    """``wanted`` fixed addresses, each a host address of the subnet, not reserved (the gateway, the
    DHCP server's), given once; InvalidRequest for one that is not (whether they are free is the
    caller's to check)."""
    out: list[str] = []
    reserved = subnet.reserved
    for text in wanted:
        addr = host_in(subnet.net, address(text, "fixed ip"), "fixed ip")
        if addr in reserved:
            raise InvalidRequest(f"fixed ip {addr} is {reserved[addr]} of {subnet.net}")
        if str(addr) in out:
            raise InvalidRequest(f"fixed ip {addr} is given twice")
        out.append(str(addr))
    return out


def new_mac() -> str:
    """A random locally administered unicast MAC under CloudLand's prefix (``02:c1:xx:xx:xx:xx``)."""
    return MAC_PREFIX + "".join(f":{b:02x}" for b in secrets.token_bytes(4))


def overlapping(cidr: str, others: Iterable[tuple[str, str]]) -> str | None:
    """The name of the first of ``others`` (name, cidr) whose network overlaps ``cidr``, or None."""
    net = IPv4Network(cidr)
    for name, other in others:
        if net.overlaps(IPv4Network(other)):
            return f"{name} ({other})"
    return None
