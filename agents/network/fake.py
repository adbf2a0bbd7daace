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
    """``DataPlane``'s interface, without a kernel: ``held`` is what it would have made."""

    def __init__(self, vtep: str = "") -> None:
        self.vtep = vtep
        self.held: set[tuple[Any, ...]] = set()
        self.plans: dict[int, SubnetPlan] = {}
        self.since: dict[tuple[Any, ...], int] = {}  # FDB object -> when it was made (Unix ms)

    def converge(self, plans: dict[int, SubnetPlan]) -> Changes:
        wanted = objects(plans)
        made = wanted - self.held
        changes = Changes(added=len(made), removed=len(self.held - wanted), unchanged=len(wanted & self.held))
        self.held, self.plans = wanted, dict(plans)
        now = procinfo.now_ms()
        self.since = {o: t for o, t in self.since.items() if o in wanted}
        self.since.update((o, now) for o in made if o[0] == "fdb")
        return changes

    def fdb(self, macs: Collection[str]) -> list[FdbEntry]:
        """The FDB entries held for ``macs`` (empty: all), by VNI then MAC."""
        return sorted(FdbEntry(o[1], o[2], o[3], self.since.get(o, 0)) for o in self.held
                      if o[0] == "fdb" and (not macs or o[2] in macs))

    def close(self) -> None:
        pass
