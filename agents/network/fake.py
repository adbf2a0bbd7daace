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


class HeldObjects(set[tuple[Any, ...]]):
    """The objects a fake data plane holds: a set that notes a change made from outside (a test's
    drift: an entry lost behind the agent's back), so that the next convergence compares
    everything, as the kernel's does; the plane's own changes go through ``set``'s methods."""

    drifted = False


def _drifting(method: Any) -> Any:
    def mutate(self: HeldObjects, *args: Any) -> Any:
        self.drifted = True
        return method(self, *args)
    return mutate


for _name in ("add", "discard", "remove", "pop", "clear", "update", "difference_update", "intersection_update",
              "symmetric_difference_update", "__ior__", "__isub__", "__iand__", "__ixor__"):
    setattr(HeldObjects, _name, _drifting(getattr(set, _name)))


class FakeDataPlane:
    """``DataPlane``'s interface, without a kernel: ``held`` is what it would have made.

    Like the kernel's, a convergence makes what is wanted and not held and removes what is held
    and not wanted. What is wanted is worked out per subnet from the subnet's plan before, by the
    entries its change names (``SubnetPlan.changed``, delta.py ``replan``), so an apply on a VPC of
    a thousand ports does not build or compare a thousand objects again (bench/net_bench.py):
    everything is compared when ``held`` was changed from outside (drift), and for a subnet whose
    plan was not made from the one held."""

    def __init__(self, vtep: str = "") -> None:
        self.vtep = vtep
        self.held = HeldObjects()
        self.plans: dict[int, SubnetPlan] = {}
        self.since: dict[tuple[Any, ...], int] = {}  # FDB object -> when it was made (Unix ms)

    def _change(self, vni: int, plan: SubnetPlan | None) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]]]:
        """The objects of subnet ``vni`` no longer wanted and newly wanted, from its plan held to ``plan``."""
        before = self.plans.get(vni)
        if before is plan:
            return set(), set()
        hint = plan.changed if plan is not None else None
        if before is None or plan is None or hint is None or hint.before() is not before or before.mtu != plan.mtu:
            old = objects({vni: before}) if before is not None else set()
            new = objects({vni: plan}) if plan is not None else set()
            return old - new, new - old
        gone: set[tuple[Any, ...]] = set()
        came: set[tuple[Any, ...]] = set()
        for kind, keys, old_map, new_map in (("fdb", hint.macs, before.fdb, plan.fdb),
                                             ("neighbour", hint.ips, before.neighbours, plan.neighbours)):
            for key in keys:
                was, now = old_map.get(key), new_map.get(key)
                if was != now:
                    if was is not None:
                        gone.add((kind, vni, key, was))
                    if now is not None:
                        came.add((kind, vni, key, now))
        if before.dhcp != plan.dhcp:
            gone |= {("dhcp", vni, before.dhcp)} if before.dhcp is not None else set()
            came |= {("dhcp", vni, plan.dhcp)} if plan.dhcp is not None else set()
        return gone, came

    def converge(self, plans: dict[int, SubnetPlan]) -> Changes:
        held = self.held
        if held.drifted:  # compare everything wanted with everything held
            wanted = objects(plans)
            made, extra = wanted - held, held - wanted
        else:  # held is what the plans held want: only the subnets' changes count
            made, extra = set(), set()
            for vni in plans.keys() | self.plans.keys():
                gone, came = self._change(vni, plans.get(vni))
                made |= came
                extra |= gone - came
            made -= held
            extra &= held
        set.difference_update(held, extra)
        set.update(held, made)
        held.drifted = False
        changes = Changes(added=len(made), removed=len(extra), unchanged=len(held) - len(made))
        self.plans = dict(plans)
        for o in extra:
            self.since.pop(o, None)
        if len(self.since) > 2 * len(held) + 64:  # entries of objects lost behind our back and not wanted again
            self.since = {o: t for o, t in self.since.items() if o in held}
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
