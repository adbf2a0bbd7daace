"""The ``net.*`` agent operations (contract: proto/v1/network.proto).

Each hypervisor has one ``Network``: the VPC states it holds (desired.py, on disk) and its data
plane (reconcile.py). Its operations are serialised by one lock, since a sync may touch every
subnet; they run on worker threads (netlink and dnsmasq may take a moment). Both end in the
same convergence of the whole hypervisor, so an apply also repairs whatever else drifted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Protocol

from cloudland.errors import InvalidRequest
from cloudland_agents.hypervisor import Hypervisor, PerHypervisor
from cloudland_agents.network.desired import HeldStates, check_port, check_subnet, check_vpc, plan
from cloudland_agents.network.dhcp import Changes
from cloudland_agents.network.fake import FakeDataPlane
from cloudland_agents.network.names import Names
from cloudland_agents.network.reconcile import DataPlane
from cloudland_agents.ops import Context, operation
from cloudland_proto.v1 import network_pb2 as npb

log = logging.getLogger(__name__)
REPAIR_S = 60.0  # how often an agent looks at its kernel objects unasked


class Network:
    """The tenant networks of one hypervisor: the kernel's (``DataPlane``), or with ``fake`` a
    ``FakeDataPlane`` that touches nothing."""

    def __init__(self, hypervisor: Hypervisor, names: Names | None = None, fake: bool = False) -> None:
        self.hypervisor = hypervisor.id
        self.names = names or Names()
        self.fake = fake  # no kernel objects: VMs' NICs need no bridge here (agents/compute/nics.py)
        # Per hypervisor: the simulated hypervisors of one leaf share its state directory.
        directory = hypervisor.state_dir / "network" / f"{self.names.prefix}-hv{hypervisor.id}"
        self.held = HeldStates(directory)
        self.plane: DataPlane | FakeDataPlane = (
            FakeDataPlane(hypervisor.vtep) if fake else DataPlane(hypervisor.id, self.names, directory, hypervisor.vtep))
        self._lock = threading.Lock()

    def close(self) -> None:
        self.plane.close()

    def sync(self, request: npb.NetSyncRequest) -> npb.NetSyncResult:
        for state in request.vpcs:
            check_vpc(state)
        with self._lock:
            vpcs: dict[int, npb.NetVpcState] = {} if request.full else dict(self.held.vpcs)
            for state in request.vpcs:
                vpcs[state.vpc_id] = state
            vpcs = {vpc_id: state for vpc_id, state in vpcs.items() if state.subnets}  # none: removed
            plans = plan(vpcs.values(), self.hypervisor, self.plane.vtep)  # refused here: nothing changed
            for vpc_id in set(self.held.vpcs) - set(vpcs):
                self.held.drop(vpc_id)
            for state in request.vpcs:
                if state.vpc_id in vpcs:
                    self.held.put(state)
            changes = self.plane.converge(plans)
            return npb.NetSyncResult(
                vpcs=[npb.NetVpcVersion(vpc_id=v.vpc_id, generation=v.generation)
                      for v in sorted(self.held.vpcs.values(), key=lambda v: v.vpc_id)],
                added=changes.added, removed=changes.removed, unchanged=changes.unchanged)

    def repair(self) -> Changes:
        """Converge what is held once more: what drifted while nobody asked (a dnsmasq that died, an
        entry deleted by hand) is made right, and nothing else changes."""
        with self._lock:
            return self.plane.converge(plan(self.held.vpcs.values(), self.hypervisor, self.plane.vtep))

    def apply(self, request: npb.NetApplyRequest) -> npb.NetApplyResult:
        if request.generation <= request.from_generation:
            raise InvalidRequest(f"generation {request.generation} must be above from_generation "
                                 f"{request.from_generation}")
        with self._lock:
            held = self.held.vpcs.get(request.vpc_id)
            if held is not None and held.generation >= request.generation:
                return npb.NetApplyResult(generation=held.generation)  # a replay, or a sync already had it
            if held is None or held.generation != request.from_generation:
                return npb.NetApplyResult(generation=held.generation if held else 0, need_sync=True)
            state = applied(held, request)
            self.plane.converge(plan([*(v for v in self.held.vpcs.values() if v.vpc_id != state.vpc_id), state],
                                     self.hypervisor, self.plane.vtep))
            if state.subnets:
                self.held.put(state)
            else:
                self.held.drop(state.vpc_id)
            return npb.NetApplyResult(generation=state.generation)


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


def applied(held: npb.NetVpcState, delta: npb.NetApplyRequest) -> npb.NetVpcState:
    """``held`` with ``delta`` applied; InvalidRequest naming a bad field of the delta."""
    where = f"vpc {delta.vpc_id}"
    subnets = {s.id: s for s in held.subnets}
    for subnet_id in delta.remove_subnets:
        subnets.pop(subnet_id, None)
    for subnet in delta.upsert_subnets:
        check_subnet(subnet, where)
        subnets[subnet.id] = subnet
    ports = {p.id: p for p in held.ports}
    for port_id in delta.remove_ports:
        ports.pop(port_id, None)
    for port in delta.upsert_ports:
        check_port(port, None, where)
        ports[port.id] = port
    # A port of a subnet this hypervisor does not hold is a part of the delta that does not concern it.
    ports = {i: p for i, p in ports.items() if p.subnet_id in subnets}
    state = npb.NetVpcState(vpc_id=held.vpc_id, generation=delta.generation, mtu=held.mtu, domain=held.domain,
                            subnets=sorted(subnets.values(), key=lambda s: s.id),
                            ports=sorted(ports.values(), key=lambda p: p.id))
    check_vpc(state)
    return state


def simulated(hypervisor: Hypervisor) -> bool:
    """A libvirt ``test:///`` hypervisor: one of many sharing a leaf and its network namespace."""
    return hypervisor.uri.startswith("test://")


# The network of each hypervisor: simulated ones get the fake data plane (their bridges would
# collide in the one namespace they share; a namespace each is a later step of issue 11).
# ``network_for.set`` installs another (another prefix, the real kernel) in tests.
network_for: PerHypervisor[Network] = PerHypervisor(lambda hv: Network(hv, fake=simulated(hv)))


@operation("net.sync")
def net_sync(ctx: Context, request: npb.NetSyncRequest) -> npb.NetSyncResult:
    """Make the listed VPCs (with ``full``, all VPCs) exactly as requested; see network.proto."""
    return network_for(ctx.hypervisor).sync(request)


@operation("net.apply")
def net_apply(ctx: Context, request: npb.NetApplyRequest) -> npb.NetApplyResult:
    """Apply one change of one VPC at its generation, or answer ``need_sync``; see network.proto."""
    return network_for(ctx.hypervisor).apply(request)
