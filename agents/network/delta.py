"""One VPC change (``NetApplyRequest``) applied to what a hypervisor holds, at the cost of the change.

An apply reaches every hypervisor of its VPC, so on a VPC of a thousand hypervisors each one's
share must not cost a pass over every port of the VPC in Python (bench/net_bench.py):

- ``applied``: the held state with the delta applied, edited in a copy (a copy of a message is
  one C call) by the ports' ids, which a held state keeps in order (``in_order``); only what the
  delta brings is checked;
- ``replan``: the VPC's plans (desired.py ``plan``) after a change of remote ports only, from
  the plans before: their entries and names changed by the ports the delta touches. Anything
  else (a subnet, a local port, the VPC's MTU or domain) returns None, and the caller plans the
  VPC whole. ``replan`` gives exactly what ``plan`` gives (tests/unit/test_network_delta.py).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import threading
import weakref
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable

from cloudland_agents.network.desired import PlanChange, SubnetPlan, check_port, check_subnet, hostname
from cloudland_proto.v1 import network_pb2 as npb


def _by_id(message: npb.NetPort | npb.NetSubnet) -> int:
    return message.id


def in_order(state: npb.NetVpcState) -> npb.NetVpcState:
    """``state`` with its subnets and ports sorted by id (as the control plane sends them), in place."""
    for field in (state.subnets, state.ports):
        ids = [m.id for m in field]
        if ids != sorted(ids):
            field.sort(key=_by_id)
    return state


def _find(ports: npb.NetVpcState, port_id: int) -> tuple[int, bool]:
    """Where ``port_id`` is, or would go, among the state's ports (sorted by id); and whether it is there."""
    index = bisect_left(ports.ports, port_id, key=_by_id)
    return index, index < len(ports.ports) and ports.ports[index].id == port_id


def applied(held: npb.NetVpcState, delta: npb.NetApplyRequest) -> npb.NetVpcState:
    """``held`` (its ports in id order) with ``delta`` applied; InvalidRequest naming a bad field
    of the delta. Only what the delta brings is checked (its subnets, its ports, and the ports of
    a subnet it changes): the rest was checked when it came."""
    where = f"vpc {delta.vpc_id}"
    state = npb.NetVpcState()
    state.CopyFrom(held)
    state.generation = delta.generation
    changed = {subnet.id: check_subnet(subnet, where) for subnet in delta.upsert_subnets}
    if changed or delta.remove_subnets:
        subnets = {s.id: s for s in state.subnets}
        for subnet_id in delta.remove_subnets:
            subnets.pop(subnet_id, None)
        subnets.update((subnet.id, subnet) for subnet in delta.upsert_subnets)
        del state.subnets[:]
        state.subnets.extend(sorted(subnets.values(), key=_by_id))
    held_subnets = {s.id: s for s in state.subnets}
    if delta.remove_subnets:  # their ports go with them
        kept = [p for p in state.ports if p.subnet_id in held_subnets]
        del state.ports[:]
        state.ports.extend(kept)
    for port_id in delta.remove_ports:
        index, found = _find(state, port_id)
        if found:
            del state.ports[index]
    networks = dict(changed)
    for port in delta.upsert_ports:
        ours = port.subnet_id in held_subnets
        if ours and port.subnet_id not in networks:
            networks[port.subnet_id] = ipaddress.IPv4Network(held_subnets[port.subnet_id].cidr)
        check_port(port, networks.get(port.subnet_id), where)
        index, found = _find(state, port.id)
        if found and ours:
            state.ports[index].CopyFrom(port)
        elif found:  # moved to a subnet this hypervisor does not hold: it does not concern it any more
            del state.ports[index]
        elif ours:  # a port of a subnet this hypervisor does not hold does not concern it
            state.ports.insert(index, port)
    if changed:
        for port in state.ports:
            if port.subnet_id in changed:
                check_port(port, changed[port.subnet_id], where)
    if delta.upsert_security_groups or delta.remove_security_groups:  # issue 12: replaced whole, by id
        groups = {g.id: g for g in state.security_groups}
        for group_id in delta.remove_security_groups:
            groups.pop(group_id, None)
        groups.update((g.id, g) for g in delta.upsert_security_groups)
        del state.security_groups[:]
        state.security_groups.extend(sorted(groups.values(), key=_by_id))
    return state


class SharedApplies:
    """``applied`` once per leaf, not once per simulated hypervisor: the hypervisors of one leaf
    hold the same state of a VPC (one multicast sync made it, or the same deltas since), and the
    leaf hands them one delta message. The first to apply it makes the state after it; the others
    take that one, by identity when they hold the same state object, else after comparing their
    state with it (once: then they hold the shared result too). States held are never changed in
    place (``applied`` edits a copy), so sharing one is safe."""

    KEEP = 8  # the last applies remembered (a few VPCs' deltas in flight at once)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._made: deque[tuple[npb.NetVpcState, npb.NetApplyRequest, npb.NetVpcState]] = deque(maxlen=self.KEEP)

    def __call__(self, held: npb.NetVpcState, delta: npb.NetApplyRequest) -> npb.NetVpcState:
        with self._lock:
            made = [(before, after) for before, request, after in self._made if request is delta]
        for before, after in made:
            if before is held or (before.generation == held.generation and len(before.ports) == len(held.ports)
                                  and len(before.subnets) == len(held.subnets) and before == held):
                return after
        after = applied(held, delta)
        with self._lock:
            self._made.append((held, delta, after))
        return after


def _remote(port: npb.NetPort, hypervisor: int, local_vtep: str) -> bool:
    """Whether the port is reached through a tunnel (as desired.py ``plan`` decides it)."""
    return port.hypervisor != hypervisor and bool(port.vtep) and port.vtep != local_vtep


def _names(port: npb.NetPort) -> Iterable[tuple[str, str]]:
    name = hostname(port.hostname)
    return ((ip, name) for ip in port.ips) if name else ()


def replan(before: dict[int, SubnetPlan], old: npb.NetVpcState, new: npb.NetVpcState,
           delta: npb.NetApplyRequest, hypervisor: int, local_vtep: str) -> dict[int, SubnetPlan] | None:
    """``plan([new], hypervisor, local_vtep)``, made from ``before`` (the plan of ``old``) when
    ``delta`` changed remote ports only; None otherwise (plan the VPC whole)."""
    if (delta.upsert_subnets or delta.remove_subnets or new.mtu != old.mtu or new.domain != old.domain
            or [s.id for s in new.subnets] != [s.id for s in old.subnets]):
        return None
    touched = {*delta.remove_ports, *(p.id for p in delta.upsert_ports)}
    gone = [old.ports[i] for i, found in (_find(old, port_id) for port_id in touched) if found]
    came = [new.ports[i] for i, found in (_find(new, port_id) for port_id in touched) if found]
    if any(p.hypervisor == hypervisor for p in (*gone, *came)):
        return None  # a local port: which subnets are made here, and their leases, may change
    if gone == came:
        return dict(before)  # a replayed or empty change of ports
    vni_of = {s.id: s.vni for s in new.subnets}
    fdb = {vni: dict(plan.fdb) for vni, plan in before.items()}
    neighbours = {vni: dict(plan.neighbours) for vni, plan in before.items()}
    dhcp = next((plan.dhcp for plan in before.values() if plan.dhcp is not None), None)
    names = list(dhcp.names) if dhcp is not None else []  # sorted, each once: kept so by bisection
    for port in gone:
        vni = vni_of.get(port.subnet_id)
        if vni in fdb and _remote(port, hypervisor, local_vtep):
            fdb[vni].pop(port.mac, None)
            for ip in port.ips:
                neighbours[vni].pop(ip, None)
        for pair in _names(port):
            index = bisect_left(names, pair)
            if index < len(names) and names[index] == pair:
                del names[index]
    for port in came:
        vni = vni_of.get(port.subnet_id)
        if vni in fdb and _remote(port, hypervisor, local_vtep):
            fdb[vni][port.mac] = port.vtep
            for ip in port.ips:
                neighbours[vni][ip] = port.mac
        for pair in _names(port):
            index = bisect_left(names, pair)
            if index == len(names) or names[index] != pair:
                names.insert(index, pair)
    sorted_names = tuple(names)
    macs = frozenset(p.mac for p in (*gone, *came))
    ips = frozenset(ip for p in (*gone, *came) for ip in p.ips)
    return {vni: dataclasses.replace(
        plan, fdb=fdb[vni], neighbours=neighbours[vni],
        dhcp=None if plan.dhcp is None else dataclasses.replace(plan.dhcp, names=sorted_names),
        changed=PlanChange(weakref.ref(plan), macs, ips))
        for vni, plan in before.items()}
