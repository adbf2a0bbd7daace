"""What one hypervisor must have of its VPCs, and the VPC states it holds on disk.

The agent holds each VPC's last state (``NetVpcState``, proto/v1/network.proto) with its
generation, in ``<state dir>/network/<prefix>-hv<id>/vpc-<id>.pb`` (0600), so that a restarted agent
knows which generation it holds. From those states ``plan`` computes the objects the kernel
must have, per subnet (keyed by VNI): a subnet is made on this hypervisor when it has a port
bound here (the model of network.proto); its remote ports become FDB entries (MAC → VTEP) and
neighbour entries (IP → MAC) on the VXLAN device; its local ports become DHCP leases; every
named port of the VPC becomes a DNS name.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from google.protobuf.message import DecodeError

from cloudland.errors import InvalidRequest
from cloudland_agents.network.names import check_vni
from cloudland_proto.v1 import network_pb2 as npb

MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
DEFAULT_MTU = 1450  # a 1500 underlay minus VXLAN over IPv4 (shared/reference/networking-on-this-machine.md)
MIN_MTU, MAX_MTU = 576, 9000
LEASE = "12h"


@dataclass(frozen=True)
class Dhcp:
    """One subnet's DNS and DHCP server: its address, options, leases (local ports) and names (the VPC's)."""

    vni: int
    network: ipaddress.IPv4Network
    address: ipaddress.IPv4Address
    router: str
    dns: tuple[str, ...]
    mtu: int
    domain: str
    leases: tuple[tuple[str, str, str], ...]  # (mac, ip, hostname), sorted
    names: tuple[tuple[str, str], ...]  # (ip, hostname), sorted

    def __hash__(self) -> int:
        """Without ``names`` (equal servers still hash equal): they are the whole VPC's, a
        thousand on a VPC of a thousand, and a fake data plane keeps a DHCP server as an object of
        a set (fake.py), hashed at every change of the subnet."""
        return hash((self.vni, self.network, self.address, self.mtu, self.leases, len(self.names)))


@dataclass(frozen=True)
class PlanChange:
    """How a plan was made from the one before (delta.py ``replan``): only the FDB entries of
    ``macs`` and the neighbour entries of ``ips`` may differ, so a data plane that still has
    ``before`` compares those, not the whole subnet (fake.py). ``before`` is weak: plans do not
    chain."""

    before: weakref.ref[SubnetPlan]
    macs: frozenset[str]
    ips: frozenset[str]


@dataclass(frozen=True)
class SubnetPlan:
    """Everything the kernel must have for one subnet on this hypervisor."""

    vni: int
    vpc_id: int
    mtu: int
    fdb: dict[str, str] = field(default_factory=dict)  # remote MAC -> its hypervisor's VTEP
    neighbours: dict[str, str] = field(default_factory=dict)  # remote IP -> its MAC
    dhcp: Dhcp | None = None
    changed: PlanChange | None = field(default=None, compare=False, repr=False)  # a hint, not content


class FdbEntry(NamedTuple):
    """A static FDB entry a data plane holds (``net.show``): since when this agent made it, in
    Unix ms (0: it found it made)."""

    vni: int
    mac: str
    vtep: str
    since_ms: int


def check_vpc(state: npb.NetVpcState) -> None:
    """InvalidRequest naming the first bad field of ``state`` (network.proto's errors)."""
    where = f"vpc {state.vpc_id}"
    if state.mtu and not MIN_MTU <= state.mtu <= MAX_MTU:
        raise InvalidRequest(f"{where}: mtu must be in [{MIN_MTU}, {MAX_MTU}], got {state.mtu}")
    networks = {s.id: check_subnet(s, where) for s in state.subnets}
    for port in state.ports:
        check_port(port, networks.get(port.subnet_id), where)


def check_subnet(subnet: npb.NetSubnet, where: str) -> ipaddress.IPv4Network:
    here = f"{where}, subnet {subnet.id}"
    check_vni(subnet.vni, here)
    try:
        network = ipaddress.IPv4Network(subnet.cidr)
    except ValueError as exc:
        raise InvalidRequest(f"{here}: cidr {subnet.cidr!r} is not an IPv4 network: {exc}") from exc
    for key in ("gateway", "dhcp_address"):
        value = getattr(subnet, key)
        if value and not _inside(value, network):
            raise InvalidRequest(f"{here}: {key} {value!r} is not an address inside {network}")
    if network.num_addresses < 4:
        raise InvalidRequest(f"{here}: cidr {network} is too small for a subnet")
    return network


def check_port(port: npb.NetPort, network: ipaddress.IPv4Network | None, where: str) -> None:
    here = f"{where}, port {port.id}"
    if not MAC_RE.fullmatch(port.mac):
        raise InvalidRequest(f"{here}: mac {port.mac!r} is not a lower-case aa:bb:cc:dd:ee:ff")
    for ip in port.ips:
        if network is not None and not _inside(ip, network):
            raise InvalidRequest(f"{here}: ip {ip!r} is not inside {network}")
    if port.vtep:
        try:
            ipaddress.IPv4Address(port.vtep)
        except ValueError as exc:
            raise InvalidRequest(f"{here}: vtep {port.vtep!r} is not an IPv4 address") from exc


def _inside(address: str, network: ipaddress.IPv4Network) -> bool:
    try:
        return ipaddress.IPv4Address(address) in network
    except ValueError:
        return False


def dhcp_address(subnet: npb.NetSubnet, network: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    """The subnet's DHCP and DNS server: ``dhcp_address``, or else the last usable address. The
    same on every hypervisor: DHCP, ARP and DNS for it are answered on the guest's own host."""
    return ipaddress.IPv4Address(subnet.dhcp_address) if subnet.dhcp_address else network.broadcast_address - 1


@functools.lru_cache(maxsize=1 << 16)  # every port's name, on every plan of its VPC
def hostname(name: str) -> str:
    """``name`` as a DNS label (lower-case letters, digits and '-'), or "" if nothing is left."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    return label[:63]


def routed_subnets(state: npb.NetVpcState, hypervisor: int) -> set[int]:
    """The subnets of the VPC's router (issue 12) that this hypervisor must have for it: all of
    them while a port of one of them is bound here (the router here reaches each), else none."""
    if not state.HasField("router"):
        return set()
    connected = set(state.router.subnet_ids)
    if not any(p.hypervisor == hypervisor and p.subnet_id in connected for p in state.ports):
        return set()
    return connected & {s.id for s in state.subnets}


def plan(held: Iterable[npb.NetVpcState], hypervisor: int, local_vtep: str) -> dict[int, SubnetPlan]:
    """The subnets this hypervisor must have, by VNI; InvalidRequest if two subnets share a VNI."""
    plans: dict[int, SubnetPlan] = {}
    for state in held:
        routed = routed_subnets(state, hypervisor)
        mtu = state.mtu or DEFAULT_MTU
        names = tuple(sorted({(ip, hostname(p.hostname)) for p in state.ports if hostname(p.hostname)
                              for ip in p.ips}))
        for subnet in state.subnets:
            ports = [p for p in state.ports if p.subnet_id == subnet.id]
            local = any(p.hypervisor == hypervisor for p in ports)
            if not local and subnet.id not in routed:
                continue  # no port bound here: the subnet lives on other hypervisors only
            if subnet.vni in plans:
                raise InvalidRequest(f"vni {subnet.vni} is used by subnet {subnet.id} of vpc {state.vpc_id} and "
                                     f"by another subnet of vpc {plans[subnet.vni].vpc_id}")
            remote = [p for p in ports if p.hypervisor != hypervisor and p.vtep and p.vtep != local_vtep]
            network = ipaddress.IPv4Network(subnet.cidr)
            dhcp = None
            if subnet.dhcp and local:  # a subnet made for the router only has no guest here to serve
                address = dhcp_address(subnet, network)
                leases = tuple(sorted((p.mac, p.ips[0], hostname(p.hostname)) for p in ports
                                      if p.hypervisor == hypervisor and p.ips))
                dhcp = Dhcp(subnet.vni, network, address, subnet.gateway, (str(address), *subnet.dns_servers), mtu,
                            state.domain, leases, names)
            plans[subnet.vni] = SubnetPlan(
                subnet.vni, state.vpc_id, mtu,
                fdb={p.mac: p.vtep for p in remote},
                neighbours={ip: p.mac for p in remote for ip in p.ips},
                dhcp=dhcp,
            )
    return plans


class HeldStates:
    """The VPC states one hypervisor holds, by VPC id, kept on disk (files 0600)."""

    def __init__(self, directory: Path, on_disk: bool = True) -> None:
        self.directory = directory
        # Without ``on_disk`` (the fake data plane, whose objects live in the leaf's memory and
        # die with it) the states are memory too: after a restart the agent holds nothing, as
        # its plane, and the full sync of its start brings everything (api/reconcile/net.py).
        self.on_disk = on_disk
        self.vpcs: dict[int, npb.NetVpcState] = {}
        for path in sorted(directory.glob("vpc-*.pb")) if on_disk and directory.is_dir() else []:
            try:
                state = npb.NetVpcState.FromString(path.read_bytes())
            except (OSError, DecodeError):
                continue  # not held: the full sync of this agent's start brings it (below)
            self.vpcs[state.vpc_id] = state

    def put(self, state: npb.NetVpcState) -> None:
        """Keep ``state``: written under a temporary name and renamed, without an fsync. A killed
        agent loses nothing by that (the page cache outlives it); a machine that crashed lost its
        bridges and namespaces with it, and its agent's start, a new incarnation, gets a ``full``
        sync of every VPC it holds anyway (api/reconcile/net.py). An fsync per hypervisor was
        most of an apply's time on a VPC of 1,000 simulated ones (bench/net_bench.py)."""
        self.vpcs[state.vpc_id] = state
        if not self.on_disk:
            return
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._path(state.vpc_id)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(state.SerializeToString())
        tmp.replace(path)

    def drop(self, vpc_id: int) -> None:
        if self.on_disk:
            self._path(vpc_id).unlink(missing_ok=True)
        self.vpcs.pop(vpc_id, None)

    def _path(self, vpc_id: int) -> Path:
        return self.directory / f"vpc-{vpc_id}.pb"
