"""Security groups and anti-spoofing on one hypervisor: nftables, one transaction per change (issue 12).

The kernel here has no bridge-family conntrack (shared/reference/networking-on-this-machine.md),
so the work is split between two tables of ours, ``<prefix>fw`` in the bridge and the inet
family, both in the host's namespace:

- **bridge** ``guard`` (prerouting): each local port's frames pass its chain ``as_<tap>``: the
  port's MAC as the source (and as ARP's sender), its addresses (plus allowed address pairs) as
  IPv4 and ARP sender, a DHCP request from 0.0.0.0; anything else (IPv6 included) is dropped.
  A NIC of ours (``<prefix>t*``) that no held port names is cut off both ways (``guarded``):
  a VM whose port's state has not arrived yet gets nothing through, rather than everything.
- **bridge** ``tag`` (forward): the frame's mark says which filtered ports it leaves and enters:
  bit 31 "ours", bits 16-30 the index of the port it leaves, bits 0-15 the one it enters. The
  indexes are the hypervisor's (``emark``), kept as the kernel holds them.
- **inet** ``raw`` (prerouting, raw): a conntrack zone per VPC (its bridges' frames; br_netfilter
  hands bridged IPv4 to these hooks), so overlapping tenant addresses never share a flow, and the
  VXLAN underlay (UDP 4789) untracked.
- **inet** ``egress`` and ``ingress`` (forward, two base chains: an ``accept`` in the first still
  lets the second run): replies and the rest of allowed flows (``ct state established,related``)
  pass, invalid packets are dropped, and a new flow jumps by the mark to the port's chain
  ``pe_<tap>`` / ``pi_<tap>``, which jumps to each of its groups' chains ``ge_<vpc>_<group>`` /
  ``gi_<vpc>_<group>`` (one per group and VPC: the rules once, whatever number of ports use them)
  and drops what none accepts. A rule naming a remote group matches the named set
  ``gm_<vpc>_<group>``: a new member is one set element, not a rule.

**One transaction per change.** ``converge`` reads both tables (``nft -j``), works out what
differs from the plan, and sends the whole difference as one ``nft -f`` (one kernel
transaction): no packet ever sees a partial ruleset, and nothing right is rewritten. Each rule
carries a comment, a hash of its text, so a chain whose rules are not exactly the plan's is
rewritten (inside that same transaction); set and map elements are added and removed one by one.

**Existing flows.** Removing a rule stops new flows at once; flows already established survive
(conntrack) until they end, as in Neutron's iptables driver before it deletes conntrack entries.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import logging
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field

from cloudland.errors import DriverError, InvalidRequest
from cloudland_agents.network.desired import dhcp_address
from cloudland_agents.network.dhcp import NETNS_DIR, Changes
from cloudland_agents.network.names import Names
from cloudland_proto.v1 import network_pb2 as npb

log = logging.getLogger(__name__)

OURS = 0x80000000
MAX_PORTS = 0x7FFF  # port indexes of one hypervisor (15 bits of the mark)
PROTOCOLS = {"tcp", "udp", "icmp", "any"}
NFT_TIMEOUT_S = 30.0


def zone(vpc_id: int) -> int:
    """The VPC's conntrack zone (16 bits; 0 is the host's own)."""
    return vpc_id % 0xFFFF + 1


# -- checks -------------------------------------------------------------------------------------


def check_groups(state: npb.NetVpcState) -> None:
    """InvalidRequest naming the first bad field of the VPC's groups and ports' allowed addresses."""
    for group in state.security_groups:
        for rule in group.rules:
            check_rule(rule, f"vpc {state.vpc_id}, security group {group.id}, rule {rule.id}")
        where = f"vpc {state.vpc_id}, security group {group.id}: member ip"  # once: a thousand members
        for ip in group.member_ips:
            _address(ip, where)
    for port in state.ports:
        for pair in port.allowed_addresses:
            _network(pair, f"vpc {state.vpc_id}, port {port.id}: allowed address")


def check_rule(rule: npb.NetSecurityRule, where: str) -> None:
    if rule.protocol not in PROTOCOLS:
        raise InvalidRequest(f"{where}: protocol must be one of {', '.join(sorted(PROTOCOLS))}, got {rule.protocol!r}")
    if rule.port_min or rule.port_max:
        if rule.protocol not in ("tcp", "udp"):
            raise InvalidRequest(f"{where}: a port range needs protocol tcp or udp, not {rule.protocol}")
        if not 1 <= rule.port_min <= rule.port_max <= 65535:
            raise InvalidRequest(f"{where}: port range {rule.port_min}-{rule.port_max} must be within 1-65535, "
                                 "lowest first")
    if rule.remote_cidr and rule.remote_group:
        raise InvalidRequest(f"{where}: a rule has a remote cidr or a remote group, not both")
    if rule.remote_cidr:
        _network(rule.remote_cidr, f"{where}: remote cidr")


@functools.lru_cache(maxsize=1 << 16)
def _address(value: str, where: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError as exc:
        raise InvalidRequest(f"{where} {value!r} is not an IPv4 address") from exc


def _network(value: str, where: str) -> str:
    try:
        return str(ipaddress.IPv4Network(value))
    except ValueError as exc:
        raise InvalidRequest(f"{where} {value!r} is not an IPv4 address or network") from exc


# -- the plan -----------------------------------------------------------------------------------


@dataclass
class Table:
    """What one of our tables must hold (or holds): sets and maps with their elements, chains with
    their rules. A set's elements and a chain's rules are compared as canonical strings."""

    sets: dict[str, str] = field(default_factory=dict)              # name -> its declaration
    elements: dict[str, set[str]] = field(default_factory=dict)     # set name -> elements
    chains: dict[str, str] = field(default_factory=dict)            # name -> its declaration ("" a regular chain)
    rules: dict[str, list[str]] = field(default_factory=dict)       # chain -> its rules (as written)


@functools.lru_cache(maxsize=1 << 17)  # every rule of every port, on every change
def _rule_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _with_comment(text: str) -> str:
    return f'{text} comment "{_rule_hash(text)}"'


def _set_of(values: Iterable[str]) -> str:
    return "{ " + ", ".join(values) + " }"


def _rule(rule: npb.NetSecurityRule, vpc_id: int) -> str:
    """One group rule as an nft rule of the group's ingress or egress chain."""
    parts = []
    if rule.protocol != "any":
        parts.append(f"meta l4proto {rule.protocol}")
    if rule.port_min:
        ports = str(rule.port_min) if rule.port_min == rule.port_max else f"{rule.port_min}-{rule.port_max}"
        parts.append(f"th dport {ports}")
    side = "daddr" if rule.egress else "saddr"
    if rule.remote_group:
        parts.append(f"ip {side} @gm_{vpc_id}_{rule.remote_group}")
    elif rule.remote_cidr and _network(rule.remote_cidr, "remote cidr") != "0.0.0.0/0":
        parts.append(f"ip {side} {_network(rule.remote_cidr, 'remote cidr')}")
    return " ".join([*parts, "accept"])


def plan(states: Iterable[npb.NetVpcState], hypervisor: int, names: Names,
         indexes: dict[str, int]) -> tuple[Table, Table]:
    """The bridge and inet tables for the local ports of ``states``. ``indexes`` (tap -> mark
    index, as the kernel holds them) is kept and extended in place for new ports."""
    bridge, inet = Table(), Table()
    bridge.chains.update(guard="type filter hook prerouting priority -300; policy accept;",
                         tag="type filter hook forward priority -300; policy accept;")
    bridge.sets.update(spoof="type ifname : verdict;", guarded="type ifname;", filtered="type ifname;",
                       emark="type ifname : mark;", imark="type ifname : verdict;")
    taps = f'"{names.prefix}t*"'  # a NIC of ours that no held port names yet: nothing passes until it has rules
    bridge.rules.update(guard=["iifname vmap @spoof", f"iifname {taps} iifname != @guarded drop"],
                        tag=[f"oifname {taps} oifname != @guarded drop", "meta mark set iifname map @emark",
                             "oifname vmap @imark"])
    inet.chains.update(raw="type filter hook prerouting priority -300; policy accept;",
                       egress="type filter hook forward priority -10; policy accept;",
                       ingress="type filter hook forward priority 0; policy accept;")
    inet.sets.update(zones="typeof iifname : ct zone;", egress="type mark : verdict;", ingress="type mark : verdict;")
    stateful = [f"meta mark & {OURS:#x} == 0 accept", "ct state established,related accept", "ct state invalid drop"]
    inet.rules.update(raw=["udp dport 4789 notrack", "ct zone set iifname map @zones"],
                      egress=[*stateful, "meta mark & 0xffff0000 vmap @egress"],
                      ingress=[*stateful, f"meta mark & {OURS | 0xFFFF:#x} vmap @ingress"])
    for name in bridge.sets:
        bridge.elements[name] = set()
    for name in inet.sets:
        inet.elements[name] = set()
    wanted: list[tuple[str, npb.NetPort, npb.NetVpcState]] = []
    seen: set[str] = set()
    for state in sorted(states, key=lambda s: s.vpc_id):  # the same plan whatever order they were held in
        subnets = {s.id: s for s in state.subnets}
        local = [p for p in state.ports if p.hypervisor == hypervisor and p.subnet_id in subnets]
        if not local:
            continue
        for subnet_id in {p.subnet_id for p in local}:
            inet.elements["zones"].add(f'"{names.bridge(subnets[subnet_id].vni)}" : {zone(state.vpc_id)}')
        groups = {g.id: g for g in state.security_groups}
        used = {g for p in local for g in p.security_groups}
        for group_id in sorted(used | {r.remote_group for g in used if g in groups for r in groups[g].rules
                                       if r.remote_group}):
            members = groups[group_id].member_ips if group_id in groups else []
            inet.sets[f"gm_{state.vpc_id}_{group_id}"] = "type ipv4_addr;"
            inet.elements[f"gm_{state.vpc_id}_{group_id}"] = {_address(ip, "member ip") for ip in members}
        for group_id in sorted(used):
            rules = groups[group_id].rules if group_id in groups else []
            for egress, chain in ((False, f"gi_{state.vpc_id}_{group_id}"), (True, f"ge_{state.vpc_id}_{group_id}")):
                inet.chains[chain] = ""
                inet.rules[chain] = [_rule(r, state.vpc_id) for r in rules if r.egress == egress]
        for port in sorted(local, key=lambda p: p.id):
            tap = names.tap(port.mac)
            if tap in seen:  # two MACs with the same last 4 bytes: one NIC name (agents/compute/nics.py)
                log.warning("event=firewall_tap_clash hypervisor=%s tap=%s port=%s vpc=%s: the first port keeps it",
                            hypervisor, tap, port.id, state.vpc_id)
                continue
            seen.add(tap)
            wanted.append((tap, port, state))
    filtered = [tap for tap, port, _ in wanted if port.security_groups]
    kept: set[int] = set()
    for tap in filtered:  # the indexes the kernel holds stay (a port's packets keep their mark)
        if tap in indexes and indexes[tap] not in kept:
            kept.add(indexes[tap])
        else:
            indexes.pop(tap, None)
    free = (i for i in range(1, MAX_PORTS + 1) if i not in kept)
    for tap, port, state in wanted:
        _guard(bridge, tap, port)
        if not port.security_groups:
            continue
        if tap not in indexes:
            index = next(free, None)
            if index is None:
                raise DriverError(hypervisor, f"more than {MAX_PORTS} ports with security groups")
            indexes[tap] = index
        _filter(bridge, inet, tap, port, state, indexes[tap])
    return bridge, inet


def _guard(bridge: Table, tap: str, port: npb.NetPort) -> None:
    """Anti-spoofing of one port: its MAC, its addresses and allowed pairs, DHCP from 0.0.0.0."""
    sources = [_address(ip, "ip") for ip in port.ips] + [_network(a, "allowed address") for a in port.allowed_addresses]
    chain = f"as_{tap}"
    bridge.chains[chain] = ""
    rules = [f"ether saddr != {port.mac} drop", f"arp saddr ether != {port.mac} drop"]
    rules.append(f"arp saddr ip != {_set_of(['0.0.0.0', *sources])} drop")
    rules.append("ip saddr 0.0.0.0 udp sport 68 udp dport 67 return")
    rules.append(f"ip saddr != {_set_of(sources)} drop" if sources else "ether type ip drop")
    rules.append("ether type != { ip, arp } drop")
    bridge.rules[chain] = rules
    bridge.elements["spoof"].add(f'"{tap}" : jump {chain}')
    bridge.elements["guarded"].add(f'"{tap}"')


@functools.lru_cache(maxsize=1 << 12)
def _dhcp_server(cidr: str, address: str) -> str:
    return str(dhcp_address(npb.NetSubnet(cidr=cidr, dhcp_address=address), ipaddress.IPv4Network(cidr)))


def _filter(bridge: Table, inet: Table, tap: str, port: npb.NetPort, state: npb.NetVpcState, index: int) -> None:
    """The port's marks and its ingress and egress chains."""
    egress_mark, ingress_mark = OURS | index << 16, OURS | index
    bridge.elements["filtered"].add(f'"{tap}"')
    bridge.elements["emark"].add(f'"{tap}" : {egress_mark:#x}')
    bridge.elements["imark"].add(f'"{tap}" : jump mi_{tap}')
    bridge.chains[f"mi_{tap}"] = ""
    bridge.rules[f"mi_{tap}"] = [f"iifname != @filtered meta mark set {ingress_mark:#x}",
                                 f"iifname @filtered meta mark set meta mark | {index:#x}"]
    subnet = next(s for s in state.subnets if s.id == port.subnet_id)
    inbound = []
    if subnet.dhcp:  # DHCP replies are not "established": the subnet's own server may answer
        server = _dhcp_server(subnet.cidr, subnet.dhcp_address)
        inbound.append(f"ip saddr {server} udp sport 67 udp dport 68 accept")
    groups = sorted(set(port.security_groups))
    for direction, first in (("i", inbound), ("e", ["udp sport 68 udp dport 67 accept"])):
        chain = f"p{direction}_{tap}"
        inet.chains[chain] = ""
        inet.rules[chain] = [*first, *(f"jump g{direction}_{state.vpc_id}_{g}" for g in groups), "drop"]
        key = egress_mark if direction == "e" else ingress_mark
        inet.elements["egress" if direction == "e" else "ingress"].add(f"{key:#x} : jump {chain}")


# -- the kernel ---------------------------------------------------------------------------------


def _canonical(element: object) -> str:
    """A set or map element as nft -j gives it, in the form ``plan`` writes it."""
    def one(value: object) -> str:
        if isinstance(value, str):
            return value if value[:1].isdigit() else f'"{value}"'
        if isinstance(value, int):
            return f"{value:#x}" if value > 0xFFFF else str(value)
        if isinstance(value, dict) and "jump" in value:
            return f"jump {value['jump']['target']}"
        if isinstance(value, dict) and "prefix" in value:
            return f"{value['prefix']['addr']}/{value['prefix']['len']}"
        return json.dumps(value)
    if isinstance(element, list):
        return f"{one(element[0])} : {one(element[1])}"
    return one(element)


def _as_held(table: Table) -> Table:
    """``table`` as ``read`` would give it once applied (each chain's rules by their hashes)."""
    return Table(sets=dict(table.sets), elements={name: set(values) for name, values in table.elements.items()},
                 chains=dict(table.chains), rules={name: [_rule_hash(r) for r in rules]
                                                   for name, rules in table.rules.items()})


class Firewall:
    """The nftables of one hypervisor's local ports, converged from the VPC states it holds."""

    def __init__(self, hypervisor: int, names: Names, netns: str | None = None) -> None:
        self.hypervisor, self.names = hypervisor, names
        # A simulated hypervisor's own namespace (hostns.py): its ports' frames cross its bridges
        # there, so its tables live there too.
        self.netns = netns
        self.table = f"{names.prefix}fw"
        self.last = ""  # the last transaction sent (bench/secgroup_bench.py reports its size)
        self.known: dict[str, Table | None] | None = None  # our tables after the last transaction
        self.transactions = 0

    def _nft(self, args: list[str], script: str | None = None) -> subprocess.CompletedProcess[str]:
        inside = ["ip", "netns", "exec", self.netns] if self.netns else []
        return subprocess.run([*inside, "nft", *args], input=script, capture_output=True, text=True, timeout=NFT_TIMEOUT_S,
                              check=False)

    def read(self, family: str) -> Table | None:
        """Our table of ``family`` as the kernel holds it, or None when there is none."""
        done = self._nft(["-j", "list", "table", family, self.table])
        if done.returncode != 0:
            if "No such file" in done.stderr:
                return None
            raise DriverError(self.hypervisor, f"nft list table {family} {self.table}: {done.stderr.strip()}")
        table = Table()
        for item in json.loads(done.stdout)["nftables"]:
            kind, body = next(iter(item.items()))
            if kind in ("set", "map"):
                table.sets[body["name"]] = ""
                table.elements[body["name"]] = {_canonical(e) for e in body.get("elem", [])}
            elif kind == "chain":
                table.chains[body["name"]] = body.get("hook", "")
                table.rules.setdefault(body["name"], [])
            elif kind == "rule":
                table.rules.setdefault(body["chain"], []).append(body.get("comment", ""))
        return table

    def indexes(self, bridge: Table | None) -> dict[str, int]:
        """tap -> mark index, from the ``emark`` map the kernel holds."""
        found: dict[str, int] = {}
        for element in (bridge.elements.get("emark", set()) if bridge else set()):
            tap, value = element.split(" : ")
            found[tap.strip('"')] = (int(value, 16) >> 16) & MAX_PORTS
        return found

    def converge(self, states: Iterable[npb.NetVpcState], fresh: bool = True) -> Changes:
        """Make our tables exactly the plan of ``states`` in one transaction; the objects changed.
        With ``fresh`` false the tables are taken as this agent's last transaction left them (when
        there was one) rather than read: reading 1,000 ports' rules costs seconds (bench), the
        change itself milliseconds. A start, a full sync and the repair loop read them."""
        if self.netns and not (NETNS_DIR / self.netns).exists():
            # A simulated hypervisor's namespace, made with its first subnet and removed with its
            # last: no port here, and no table (the next one is read, not assumed).
            self.known = None
            return Changes()
        if fresh or self.known is None:
            held = {"bridge": self.read("bridge"), "inet": self.read("inet")}
        else:
            held = dict(self.known)
        self.known = None  # until this transaction is known to have been applied
        states = list(states)
        wanted_bridge, wanted_inet = plan(states, self.hypervisor, self.names, self.indexes(held["bridge"]))
        changes = Changes()
        commands: list[str] = []
        empty = not wanted_bridge.elements["spoof"]
        for family, wanted in (("bridge", wanted_bridge), ("inet", wanted_inet)):
            have = held[family]
            if empty:  # no local port: our tables go
                if have is not None:
                    commands.append(f"delete table {family} {self.table}")
                    changes.removed += 1
                continue
            commands += self._diff(family, wanted, have or Table(), changes)
        if commands:
            self.last = "\n".join(commands) + "\n"
            done = self._nft(["-f", "-"], self.last)
            if done.returncode != 0:
                raise DriverError(self.hypervisor, f"nft transaction of {len(commands)} commands refused: "
                                               f"{done.stderr.strip()[:2000]}")
            self.transactions += 1
            log.info("event=firewall_applied hypervisor=%s commands=%d bytes=%d added=%d removed=%d", self.hypervisor,
                     len(commands), len(self.last), changes.added, changes.removed)
        self.known = ({"bridge": None, "inet": None} if empty
                      else {"bridge": _as_held(wanted_bridge), "inet": _as_held(wanted_inet)})
        return changes

    def _diff(self, family: str, wanted: Table, have: Table, changes: Changes) -> list[str]:
        t = f"{family} {self.table}"
        add: list[str] = [f"add table {t}"] if not have.chains and not have.sets else []
        for name, declaration in wanted.sets.items():
            if name not in have.sets:
                kind = "map" if ":" in declaration else "set"
                add.append(f"add {kind} {t} {name} {{ {declaration} }}")
                changes.added += 1
        for name, declaration in wanted.chains.items():
            if name not in have.chains:
                add.append(f"add chain {t} {name}" + (f" {{ {declaration} }}" if declaration else ""))
        rewrite: list[str] = []
        for name, rules in wanted.rules.items():
            if [_rule_hash(r) for r in rules] == have.rules.get(name):
                changes.unchanged += 1
                continue
            if name in have.chains:
                rewrite.append(f"flush chain {t} {name}")
            rewrite += [f"add rule {t} {name} {_with_comment(r)}" for r in rules]
            changes.added += 1
        elements: list[str] = []
        for name, values in wanted.elements.items():
            held = have.elements.get(name, set())
            missing, extra = sorted(values - held), sorted(held - values)
            if extra:
                elements.append(f"delete element {t} {name} {_set_of(extra)}")
                changes.removed += len(extra)
            if missing:
                elements.append(f"add element {t} {name} {_set_of(missing)}")
                changes.added += len(missing)
            changes.unchanged += len(values & held)
        gone = sorted(set(have.chains) - set(wanted.chains), key=lambda c: (not c.startswith("p"), c))
        remove = [f"flush chain {t} {c}" for c in gone] + [f"delete chain {t} {c}" for c in gone]
        remove += [f"delete set {t} {s}" for s in sorted(set(have.sets) - set(wanted.sets))]  # member sets only
        changes.removed += len(gone) + len(set(have.sets) - set(wanted.sets))
        return add + rewrite + elements + remove
