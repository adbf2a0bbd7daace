"""A data plane that keeps its objects in memory: for simulated hypervisors (libvirt ``test:///``),
many of which share one leaf process and one network namespace, where real bridges of one VNI
would collide, and for the control plane's tests. It counts as the real one does.

Simulated hypervisors with this data plane each get a VTEP of their own (``simulated_vtep``), an
address of the benchmarking range 198.18.0.0/15 (RFC 2544) that nothing routes: they stand for
separate hosts, so each must hold FDB entries for the others' ports, which a VTEP shared with
its leaf's host would rule out (a port behind one's own VTEP is local, desired.py ``plan``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from typing import Any

from cloudland import procinfo
from cloudland_agents.network.desired import FdbEntry, SubnetPlan
from cloudland_agents.network.dhcp import Changes


SIMULATED_VTEPS = ipaddress.IPv4Network("198.18.0.0/15")


def simulated_vtep(hypervisor: int) -> str:
    """The VTEP of simulated hypervisor ``hypervisor`` under the fake data plane: 198.18.0.1 for 0."""
    if not 0 <= hypervisor < SIMULATED_VTEPS.num_addresses - 2:
        raise ValueError(f"hypervisor {hypervisor} has no address in {SIMULATED_VTEPS}")
    return str(SIMULATED_VTEPS.network_address + hypervisor + 1)


def objects(plans: dict[int, SubnetPlan]) -> set[tuple[Any, ...]]:
    """The objects the real data plane would make for ``plans``, one tuple each."""
    found: set[tuple[Any, ...]] = set()
    for vni, plan in plans.items():
        found |= {("bridge", vni, plan.mtu), ("vxlan", vni, plan.mtu)}
        found |= {("fdb", vni, mac, vtep) for mac, vtep in plan.fdb.items()}
        found |= {("neighbour", vni, ip, mac) for ip, mac in plan.neighbours.items()}
        if plan.dhcp is not None:
            found.add(("dhcp", vni, plan.dhcp))
    return found


class FakeDataPlane:
    """``DataPlane``'s interface, without a kernel: ``held`` is what it would have made.

    Like the kernel's, a convergence compares everything wanted with everything held, so what
    drifted is made again; what is wanted is worked out per subnet from the subnet's plan before,
    by the entries that changed, so an apply on a VPC of a thousand ports does not build a
    thousand objects again (bench/net_bench.py)."""

    def __init__(self, vtep: str = "") -> None:
        self.vtep = vtep
        self.held: set[tuple[Any, ...]] = set()
        self.plans: dict[int, SubnetPlan] = {}
        self._wanted: dict[int, frozenset[tuple[Any, ...]]] = {}  # per VNI: the objects of self.plans[vni]
        self.since: dict[tuple[Any, ...], int] = {}  # FDB object -> when it was made (Unix ms)

    def _objects(self, vni: int, plan: SubnetPlan) -> frozenset[tuple[Any, ...]]:
        before, had = self.plans.get(vni), self._wanted.get(vni)
        if before is plan and had is not None:
            return had
        if before is None or had is None or before.mtu != plan.mtu:
            return frozenset(objects({vni: plan}))
        gone: set[tuple[Any, ...]] = set()
        came: set[tuple[Any, ...]] = set()
        for kind, old, new in (("fdb", before.fdb, plan.fdb), ("neighbour", before.neighbours, plan.neighbours)):
            for key, value in old.items() ^ new.items():  # the entries that differ, either way
                (came if new.get(key) == value else gone).add((kind, vni, key, value))
        if before.dhcp != plan.dhcp:
            gone |= {("dhcp", vni, before.dhcp)} if before.dhcp is not None else set()
            came |= {("dhcp", vni, plan.dhcp)} if plan.dhcp is not None else set()
        return had - gone | came

    def converge(self, plans: dict[int, SubnetPlan]) -> Changes:
        per_vni = {vni: self._objects(vni, plan) for vni, plan in plans.items()}
        wanted: set[tuple[Any, ...]] = set().union(*per_vni.values())
        made, extra = wanted - self.held, self.held - wanted
        changes = Changes(added=len(made), removed=len(extra), unchanged=len(wanted) - len(made))
        self.held, self.plans, self._wanted = wanted, dict(plans), per_vni
        for o in extra:
            self.since.pop(o, None)
        if len(self.since) > 2 * len(wanted) + 64:  # entries of objects lost behind our back and not wanted again
            self.since = {o: t for o, t in self.since.items() if o in wanted}
        now = procinfo.now_ms()
        self.since.update((o, now) for o in made if o[0] == "fdb")
        return changes

    def fdb(self, macs: Collection[str]) -> list[FdbEntry]:
        """The FDB entries held for ``macs`` (empty: all), by VNI then MAC."""
        if not macs:
            found = [o for o in self.held if o[0] == "fdb"]
        else:
            found = [("fdb", vni, mac, plan.fdb[mac]) for vni, plan in self.plans.items() for mac in macs
                     if mac in plan.fdb]
        return sorted(FdbEntry(o[1], o[2], o[3], self.since.get(o, 0)) for o in found if o in self.held)

    def close(self) -> None:
        pass
