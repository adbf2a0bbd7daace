"""An apply's work at the cost of its change (agents/network/delta.py, fake.py): ``applied`` edits
the held state in place, ``replan`` plans a VPC from its plan before, the fake data plane works out
what is wanted from what it wanted before. Each must give exactly what doing it whole gives: a
few hundred random changes (seeded) are done both ways and compared."""

from __future__ import annotations

import ipaddress
import random
from pathlib import Path

import pytest

from cloudland_agents.hypervisor import open_simulated
from cloudland_agents.network.delta import applied, in_order, replan
from cloudland_agents.network.desired import HeldStates, plan
from cloudland_agents.network.fake import FakeDataPlane, objects
from cloudland_agents.network.ops import Network
from cloudland_proto.v1 import network_pb2 as npb

ME = 0
MY_VTEP = "198.18.0.1"
SUBNETS = [npb.NetSubnet(id=1, vpc_id=7, vni=100, cidr="10.0.0.0/22", gateway="10.0.0.1", dhcp=True),
           npb.NetSubnet(id=2, vpc_id=7, vni=101, cidr="10.0.8.0/22", dhcp=False),
           npb.NetSubnet(id=3, vpc_id=7, vni=102, cidr="10.0.16.0/22", dhcp=True)]  # no port here: not made


class Ports:
    """Ports with MACs and addresses unique in the VPC, as IPAM and the database keep them."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.next_id = 1
        self.used: set[int] = set()

    def port(self, port_id: int | None = None, subnet: int | None = None, hypervisor: int | None = None) -> npb.NetPort:
        rng = self.rng
        if port_id is None:
            port_id, self.next_id = self.next_id, self.next_id + 1
        subnet = subnet or rng.choice([1, 1, 2, 3])
        hypervisor = rng.choice([1, 2, 3, 4, 5]) if hypervisor is None else hypervisor
        n = rng.choice([n for n in range(2, 1000) if n not in self.used])
        self.used.add(n)
        address = ipaddress.IPv4Network(SUBNETS[subnet - 1].cidr).network_address + n
        vtep = rng.choice([f"198.18.0.{hypervisor + 1}", f"198.18.0.{hypervisor + 1}", "", MY_VTEP])
        return npb.NetPort(id=port_id, subnet_id=subnet, mac=f"02:c1:00:00:{n >> 8:02x}:{n & 255:02x}",
                           ips=[str(address)], hostname=rng.choice(["", f"Vm_{n}", f"vm-{n}"]),
                           instance_id=port_id, hypervisor=hypervisor, vtep=vtep)


def start(rng: random.Random, ports: Ports, count: int = 40) -> npb.NetVpcState:
    mine = [ports.port(subnet=1, hypervisor=ME), ports.port(subnet=2, hypervisor=ME)]
    return npb.NetVpcState(vpc_id=7, generation=1, mtu=1450, domain="vpc-7.test", subnets=SUBNETS,
                           ports=sorted(mine + [ports.port() for _ in range(count)], key=lambda p: p.id))


def a_delta(rng: random.Random, ports: Ports, state: npb.NetVpcState) -> npb.NetApplyRequest:
    """A change as the control plane makes them: mostly remote ports bound or gone, sometimes a
    port moved or renamed, now and then a local port or a subnet."""
    delta = npb.NetApplyRequest(vpc_id=7, from_generation=state.generation, generation=state.generation + 1)
    held = list(state.ports)
    for _ in range(rng.choice([1, 1, 1, 2, 5])):
        roll = rng.random()
        if roll < 0.45:
            delta.upsert_ports.append(ports.port())
        elif roll < 0.75 and held:
            delta.remove_ports.append(rng.choice(held).id)
        elif roll < 0.9 and held:
            old = rng.choice(held)
            delta.upsert_ports.append(ports.port(port_id=old.id))  # moved, renamed, readdressed
        elif roll < 0.95:
            delta.upsert_ports.append(ports.port(hypervisor=ME))
        else:
            delta.upsert_subnets.append(npb.NetSubnet(id=3, vpc_id=7, vni=102, cidr="10.0.16.0/22", dhcp=False))
    return delta


@pytest.mark.parametrize("seed", range(6))
def test_replan_gives_what_planning_the_vpc_whole_gives(seed: int) -> None:
    rng = random.Random(seed)
    ports = Ports(rng)
    state = start(rng, ports)
    plans = plan([state], ME, MY_VTEP)
    replanned = 0
    for _ in range(60):
        delta = a_delta(rng, ports, state)
        new = applied(state, delta)
        assert [p.id for p in new.ports] == sorted(p.id for p in new.ports)
        whole = plan([new], ME, MY_VTEP)
        after = replan(plans, state, new, delta, ME, MY_VTEP)
        if after is not None:
            replanned += 1
            assert after == whole, delta
        state, plans = new, whole
    assert replanned > 30  # most changes are remote ports: the cheap path is the common one


def test_applied_gives_what_rebuilding_the_state_gives() -> None:
    rng = random.Random(11)
    ports = Ports(rng)
    state = start(rng, ports)
    for _ in range(200):
        delta = a_delta(rng, ports, state)
        new = applied(state, delta)
        # Rebuilt from scratch: the held subnets with the delta's, the held ports with the
        # delta's, only those of subnets held, by id.
        subnets = {s.id: s for s in [*state.subnets, *delta.upsert_subnets] if s.id not in delta.remove_subnets}
        kept = {p.id: p for p in state.ports if p.id not in delta.remove_ports}
        kept.update((p.id, p) for p in delta.upsert_ports)
        assert list(new.subnets) == sorted(subnets.values(), key=lambda s: s.id)
        assert list(new.ports) == sorted((p for p in kept.values() if p.subnet_id in subnets), key=lambda p: p.id)
        assert new.generation == delta.generation
        state = new


def test_the_fake_converges_from_what_it_wanted_as_from_nothing() -> None:
    rng = random.Random(5)
    ports = Ports(rng)
    state = start(rng, ports)
    going = FakeDataPlane(MY_VTEP)
    going.converge(plan([state], ME, MY_VTEP))
    for _ in range(80):
        state = applied(state, a_delta(rng, ports, state))
        plans = plan([state], ME, MY_VTEP)
        before = set(going.held)
        changes = going.converge(plans)
        assert going.held == objects(plans)
        assert (changes.added, changes.removed) == (len(going.held - before), len(before - going.held))
        if rng.random() < 0.2:  # drift behind its back: a convergence makes it again
            lost = rng.choice(sorted(going.held, key=repr))
            going.held.discard(lost)
            assert going.converge(plans).added == 1 and lost in going.held


def test_a_network_applying_changes_holds_what_a_fresh_sync_of_its_state_holds(tmp_path: Path) -> None:
    rng = random.Random(8)
    ports = Ports(rng)
    state = start(rng, ports)
    network = Network(open_simulated(ME, tmp_path / "a", vtep=MY_VTEP), fake=True)
    network.sync(npb.NetSyncRequest(vpcs=[state]))
    for _ in range(60):
        delta = a_delta(rng, ports, state)
        assert network.apply(delta).generation == delta.generation
        state = applied(state, delta)
    fresh = Network(open_simulated(ME, tmp_path / "b", vtep=MY_VTEP), fake=True)
    fresh.sync(npb.NetSyncRequest(vpcs=[state]))
    assert network.plane.held == fresh.plane.held == objects(plan([state], ME, MY_VTEP))
    assert network.held.vpcs[7] == state
    # A restarted agent of the kernel's plane reads the same state back from disk, in order, and
    # plans it the same (the fake's states are memory, as its objects: test_network_ops.py).
    HeldStates(tmp_path / "kept").put(state)
    again = in_order(HeldStates(tmp_path / "kept").vpcs[7])
    assert again == state and objects(plan([again], ME, MY_VTEP)) == network.plane.held


def test_in_order_sorts_a_state_sent_out_of_order() -> None:
    state = npb.NetVpcState(vpc_id=7, subnets=[SUBNETS[1], SUBNETS[0]],
                            ports=[npb.NetPort(id=3), npb.NetPort(id=1), npb.NetPort(id=2)])
    assert [p.id for p in in_order(state).ports] == [1, 2, 3] and [s.id for s in state.subnets] == [1, 2]


def test_a_leafs_hypervisors_share_each_applied_state_and_each_converges_as_a_fresh_sync(tmp_path: Path) -> None:
    """SharedApplies: hypervisors of one process holding equal states (here from separate syncs,
    so not the same object) end up holding one state object per delta, while one holding another
    state of the VPC (without subnet 2) gets its own; every plane, drift included, ends as a fresh
    sync of its state would."""
    rng = random.Random(11)
    ports = Ports(rng)
    state = start(rng, ports)
    other = npb.NetVpcState()
    other.CopyFrom(state)
    del other.subnets[1]
    del other.ports[:]
    other.ports.extend(p for p in state.ports if p.subnet_id != 2)
    networks = [Network(open_simulated(hv, tmp_path / f"hv{hv}", vtep=f"198.18.0.{hv + 1}"), fake=True)
                for hv in (ME, 1, 2)]
    for network, held in zip(networks, (state, npb.NetVpcState.FromString(state.SerializeToString()), other)):
        network.sync(npb.NetSyncRequest(vpcs=[held]))
    for n in range(40):
        delta = a_delta(rng, ports, state)
        if delta.upsert_subnets or delta.remove_subnets or any(p.subnet_id == 2 for p in delta.upsert_ports):
            continue  # keep ``other`` a state of subnet 1 and 3 only, as the control plane would send it
        for network in networks:
            assert network.apply(delta).generation == delta.generation
        state, other = applied(state, delta), applied(other, delta)
        first, second, third = (network.held.vpcs[7] for network in networks)
        assert first is second and first == state and third == other and third is not first
        for network, held in zip(networks, (state, state, other)):  # drift of the round before repaired
            assert network.plane.held == objects(plan([held], network.hypervisor, network.plane.vtep))
        if n % 5 == 0:  # drift on one plane: its next convergence repairs it
            lost = rng.choice(sorted(networks[1].plane.held, key=repr))
            networks[1].plane.held.discard(lost)
    for network, held in zip(networks, (state, state, other)):
        network.repair()
        fresh = Network(open_simulated(network.hypervisor, tmp_path / f"fresh{network.hypervisor}",
                                       vtep=network.plane.vtep), fake=True)
        fresh.sync(npb.NetSyncRequest(vpcs=[held]))
        assert network.plane.held == fresh.plane.held
