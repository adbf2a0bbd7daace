"""The ``net.*`` agent operations (contract: proto/v1/network.proto).

Each hypervisor has one ``Network``: the VPC states it holds (desired.py, on disk) and its data
plane (reconcile.py). Its operations are serialised by one lock, since a sync may touch every
subnet; they run on worker threads (netlink and dnsmasq may take a moment). Both end in the
same convergence of the whole hypervisor, so an apply also repairs whatever else drifted.

Each VPC's plan (desired.py) is kept with the state it was made from, so an apply plans only
its own VPC, and only by what its delta changed where it can (delta.py ``replan``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Protocol

from cloudland.errors import InvalidRequest
from cloudland_agents.hypervisor import Hypervisor, PerHypervisor
from cloudland_agents.network.delta import SharedApplies, in_order, replan
from cloudland_agents.network.desired import HeldStates, SubnetPlan, check_vpc, plan
from cloudland_agents.network.dhcp import Changes
from cloudland_agents.network.fake import FakeDataPlane
from cloudland_agents.network.hostns import HostNamespace, host_netns
from cloudland_agents.network.firewall import Firewall, check_groups
from cloudland_agents.network.names import Names
from cloudland_agents.network.reconcile import DataPlane
from cloudland_agents.network.router import plan_routers
from cloudland_agents.network.routing import Routers
from cloudland_agents.ops import Context, operation
from cloudland_proto.v1 import network_pb2 as npb

log = logging.getLogger(__name__)
REPAIR_S = 60.0  # how often an agent looks at its kernel objects unasked


shared_applied = SharedApplies()  # one per process: the simulated hypervisors of a leaf share its work


class Network:
    """The tenant networks of one hypervisor: the kernel's (``DataPlane``), with ``own_namespace``
    in a namespace of the hypervisor's own (a simulated one, hostns.py), or with ``fake`` a
    ``FakeDataPlane`` that touches nothing."""

    def __init__(self, hypervisor: Hypervisor, names: Names | None = None, fake: bool = False,
                 own_namespace: bool = False) -> None:
        self.hypervisor = hypervisor.id
        self.names = names or Names()
        host = None
        if own_namespace and not fake:
            self.names = Names(self.names.prefix, host=host_netns(self.names.prefix, hypervisor.id))
            host = HostNamespace(hypervisor.id, self.names.prefix, hypervisor.vtep)
        self.fake = fake  # no kernel objects: VMs' NICs need no bridge here (agents/compute/nics.py)
        # Per hypervisor: the simulated hypervisors of one leaf share its state directory.
        directory = hypervisor.state_dir / "network" / f"{self.names.prefix}-hv{hypervisor.id}"
        self.held = HeldStates(directory, on_disk=not fake)  # a fake's objects are memory: so is its state
        for state in self.held.vpcs.values():
            in_order(state)
        self._plans: dict[int, tuple[npb.NetVpcState, dict[int, SubnetPlan]]] = {}  # vpc -> (state, its plan)
        self.plane: DataPlane | FakeDataPlane = (
            FakeDataPlane(hypervisor.vtep) if fake else DataPlane(hypervisor.id, self.names, directory, hypervisor.vtep, host))
        # The VPCs' routers (issue 12), in the kernel only: the fake plane routes nothing.
        self.routers = None if fake else Routers(hypervisor.id, self.names,
                                                 lambda: self.plane.kernel)  # type: ignore[union-attr]
        # Security groups (issue 12): the kernel's nftables, in the hypervisor's own namespace if it
        # has one; none on the fake data plane.
        self.firewall = None if fake else Firewall(hypervisor.id, self.names, host.name if host else None)
        self._lock = threading.Lock()

    def close(self) -> None:
        if self.routers is not None:
            self.routers.close()
        self.plane.close()

    def _converge(self, states: list[npb.NetVpcState], plans: dict[int, SubnetPlan],
                  only: set[int] | None = None, fresh: bool = False) -> Changes:
        """The subnets (``plans``), then the routers that plug into their bridges (with ``only``,
        those VPCs' routers), then the firewall of every held state's ports (one nft transaction;
        ``fresh``: read from the kernel first, firewall.py): their objects counted together."""
        changes = self.plane.converge(plans)
        if self.routers is not None:
            routed = self.routers.converge(plan_routers(states, self.hypervisor), only)
            changes.added, changes.removed = changes.added + routed.added, changes.removed + routed.removed
            changes.unchanged += routed.unchanged
        if self.firewall is not None:
            walls = self.firewall.converge(states, fresh=fresh)
            changes.added += walls.added
            changes.removed += walls.removed
            changes.unchanged += walls.unchanged
        return changes

    def sync(self, request: npb.NetSyncRequest, checked: bool = False) -> npb.NetSyncResult:
        """``checked``: ``check_sync(request)`` passed already (once for all of a leaf's hypervisors)."""
        if not checked:
            check_sync(request)
        with self._lock:
            vpcs: dict[int, npb.NetVpcState] = {} if request.full else dict(self.held.vpcs)
            for state in request.vpcs:
                vpcs[state.vpc_id] = state
            vpcs = {vpc_id: state for vpc_id, state in vpcs.items() if state.subnets}  # none: removed
            plans = self._plan(list(vpcs.values()))  # refused here: nothing changed
            for vpc_id in set(self.held.vpcs) - set(vpcs):
                self.held.drop(vpc_id)
            for state in request.vpcs:
                if state.vpc_id in vpcs:
                    self.held.put(state)
            changes = self._converge(list(vpcs.values()), plans,
                                     None if request.full else {state.vpc_id for state in request.vpcs},
                                     fresh=request.full)
            return npb.NetSyncResult(
                vpcs=self._versions(),
                added=changes.added, removed=changes.removed, unchanged=changes.unchanged)

    def _versions(self) -> list[npb.NetVpcVersion]:
        return [npb.NetVpcVersion(vpc_id=v.vpc_id, generation=v.generation)
                for v in sorted(self.held.vpcs.values(), key=lambda v: v.vpc_id)]

    def _plan_of(self, state: npb.NetVpcState) -> dict[int, SubnetPlan]:
        kept = self._plans.get(state.vpc_id)
        if kept is not None and kept[0] is state:
            return kept[1]
        plans = plan([state], self.hypervisor, self.plane.vtep)
        self._plans[state.vpc_id] = (state, plans)
        return plans

    def _plan(self, states: list[npb.NetVpcState]) -> dict[int, SubnetPlan]:
        """``plan(states)``, each VPC's part as kept unless its state changed."""
        merged: dict[int, SubnetPlan] = {}
        for state in states:
            for vni, subnet in self._plan_of(state).items():
                if vni in merged:  # two VPCs' subnets share a VNI: plan says which, and refuses
                    return plan(states, self.hypervisor, self.plane.vtep)
                merged[vni] = subnet
        for vpc_id in set(self._plans) - {s.vpc_id for s in states} - set(self.held.vpcs):
            del self._plans[vpc_id]
        return merged

    def repair(self) -> Changes:
        """Converge what is held once more: what drifted while nobody asked (a dnsmasq that died, an
        entry deleted by hand) is made right, and nothing else changes."""
        with self._lock:
            states = list(self.held.vpcs.values())
            return self._converge(states, self._plan(states), fresh=True)

    def apply(self, request: npb.NetApplyRequest, checked: bool = False) -> npb.NetApplyResult:
        """``checked``: ``check_delta(request)`` passed already (once for all of a leaf's hypervisors)."""
        if not checked:
            check_delta(request)
        with self._lock:
            held = self.held.vpcs.get(request.vpc_id)
            if held is not None and held.generation >= request.generation:
                return npb.NetApplyResult(generation=held.generation)  # a replay, or a sync already had it
            if held is None or held.generation != request.from_generation:
                return npb.NetApplyResult(generation=held.generation if held else 0, need_sync=True)
            state = shared_applied(held, request)
            after = replan(self._plan_of(held), held, state, request, self.hypervisor, self.plane.vtep)
            if after is not None:
                self._plans[state.vpc_id] = (state, after)
            states = [*(v for v in self.held.vpcs.values() if v.vpc_id != state.vpc_id), state]
            self._converge(states, self._plan(states), {state.vpc_id})
            if state.subnets:
                self.held.put(state)
            else:
                self.held.drop(state.vpc_id)
            return npb.NetApplyResult(generation=state.generation)

    def show(self, request: npb.NetShowRequest) -> npb.NetShowResult:
        """What the data plane holds (the asked MACs' FDB entries, read where they live), unchanged."""
        with self._lock:
            entries = self.plane.fdb(frozenset(mac.lower() for mac in request.macs))
            return npb.NetShowResult(
                vpcs=self._versions(),
                fdb=[npb.NetFdbEntry(vni=e.vni, mac=e.mac, vtep=e.vtep, since_ms=e.since_ms) for e in entries])


def check_sync(request: npb.NetSyncRequest) -> None:
    """InvalidRequest naming the first bad field of a sync's states (network.proto's errors); the
    states' subnets and ports put in id order, in place (once, before its targets' threads share it)."""
    for state in request.vpcs:
        check_vpc(state)
        check_groups(state)
        in_order(state)


def check_delta(request: npb.NetApplyRequest) -> None:
    """InvalidRequest naming the first bad field of a delta that does not depend on what a
    hypervisor holds: its generations, its groups (a thousand member addresses on a VPC of a
    thousand) and its ports' allowed addresses. Its ports' addresses are checked against the
    subnets held, by ``applied``."""
    if request.generation <= request.from_generation:
        raise InvalidRequest(f"generation {request.generation} must be above from_generation "
                             f"{request.from_generation}")
    check_groups(npb.NetVpcState(vpc_id=request.vpc_id, ports=request.upsert_ports,
                                 security_groups=request.upsert_security_groups))


class Repairable(Protocol):
    """What the repair loop repairs: a ``Network``, or a hypervisor's test guests (agents/compute/nics.py)."""

    hypervisor: int

    def repair(self) -> Changes: ...


def repair_loop(networks: Sequence[Repairable], stop: threading.Event, every: float = REPAIR_S) -> None:
    """Repair ``networks`` at once (an agent's start), then every ``every`` seconds until ``stop``:
    the agent's own periodic look at the kernel (issue 11). Failures are logged and retried."""
    while True:
        for network in networks:
            try:
                changes = network.repair()
            except Exception:  # noqa: BLE001 - a failed repair waits for the next round, the thread goes on
                log.exception("event=net_repair_failed hypervisor=%s", network.hypervisor)
                continue
            if changes.added or changes.removed:
                log.warning("event=net_repaired hypervisor=%s added=%s removed=%s", network.hypervisor,
                            changes.added, changes.removed)
        if stop.wait(every):
            return


def simulated(hypervisor: Hypervisor) -> bool:
    """A libvirt ``test:///`` hypervisor: one of many sharing a leaf and its network namespace."""
    return hypervisor.uri.startswith("test://")


# The network of each hypervisor: simulated ones get the fake data plane (their bridges would
# collide in the one namespace they share; the leaf gives each a namespace of its own with
# CLOUDLAND_NETWORK=netns, agents/leaf.py).
# ``network_for.set`` installs another (another prefix, the real kernel) in tests.
network_for: PerHypervisor[Network] = PerHypervisor(lambda hv: Network(hv, fake=simulated(hv)))


# The net.* operations change no hypervisor report (VMs, memory, disks): ``reports=False``.
@operation("net.sync", check=check_sync, reports=False)
def net_sync(ctx: Context, request: npb.NetSyncRequest) -> npb.NetSyncResult:
    """Make the listed VPCs (with ``full``, all VPCs) exactly as requested; see network.proto."""
    return network_for(ctx.hypervisor).sync(request, checked=ctx.checked)


def _at_generation(request: npb.NetApplyRequest, result: npb.NetApplyResult) -> bool:
    """An apply that left the hypervisor at the delta's generation answers OK without result (network.proto)."""
    return result.generation == request.generation and not result.need_sync


@operation("net.apply", batched=True, check=check_delta, reports=False, compact=_at_generation)
def net_apply(ctx: Context, request: npb.NetApplyRequest) -> npb.NetApplyResult:
    """Apply one change of one VPC at its generation, or answer ``need_sync``; see network.proto."""
    return network_for(ctx.hypervisor).apply(request, checked=ctx.checked)


@operation("net.show", batched=True, reports=False)
def net_show(ctx: Context, request: npb.NetShowRequest) -> npb.NetShowResult:
    """What the data plane holds now (FDB entries of the asked MACs), read, not changed; see network.proto."""
    return network_for(ctx.hypervisor).show(request)
