"""net.sync and net.apply (agents/network/ops.py) on a simulated hypervisor, whose data plane is
the fake: generations, replays, need_sync, full syncs, a restart that knows what it held, and
bad input refused. The kernel's side is tests/network/test_dataplane.py."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from cloudland.errors import InvalidRequest
from cloudland_agents import ops
from cloudland_agents.hypervisor import open_simulated
from cloudland_agents.network.fake import FakeDataPlane, simulated_vtep
from cloudland_agents.network.ops import Network, network_for, repair_loop
from tests.unit.agentcall import call


def state(vpc_id: int, generation: int, *hypervisors: int) -> dict[str, Any]:
    """A VPC with one subnet (vni 100 + id) and a port on each of ``hypervisors``."""
    subnet_id = vpc_id * 10
    return {"vpc_id": vpc_id, "generation": generation, "domain": f"vpc-{vpc_id}.test",
            "subnets": [{"id": subnet_id, "vpc_id": vpc_id, "vni": 100 + vpc_id, "cidr": "10.0.0.0/24", "dhcp": True}],
            "ports": [{"id": subnet_id + n, "subnet_id": subnet_id, "mac": f"02:00:00:00:{vpc_id:02x}:{n:02x}",
                       "ips": [f"10.0.0.{10 + n}"], "hostname": f"vm{n}", "hypervisor": hv, "vtep": f"192.0.2.{hv}"}
                      for n, hv in enumerate(hypervisors, 1)]}


@pytest.fixture
def ctx(tmp_path: Path):
    hv = open_simulated(1, tmp_path, vtep="192.0.2.1")
    yield ops.Context(hv, "job-1", 0.0, lambda _: None)
    hv.close()


def test_a_simulated_hypervisor_gets_the_fake_and_a_second_sync_changes_nothing(ctx: ops.Context) -> None:
    first = call(ctx, "net.sync", {"vpcs": [state(1, 1, 1, 2, 3)]})
    assert isinstance(network_for(ctx.hypervisor).plane, FakeDataPlane)
    # bridge, vxlan, dhcp, 2 remote ports x (fdb + neighbour)
    assert (first["added"], first["removed"], first["unchanged"]) == (7, 0, 0)
    assert first["vpcs"] == [{"vpc_id": 1, "generation": 1}]
    again = call(ctx, "net.sync", {"vpcs": [state(1, 1, 1, 2, 3)]})
    assert (again["added"], again["removed"], again["unchanged"]) == (0, 0, 7)


def test_show_reads_which_entries_are_held_and_since_when(ctx: ops.Context) -> None:
    call(ctx, "net.sync", {"vpcs": [state(1, 1, 1, 2)]})
    first = call(ctx, "net.show", {"macs": ["02:00:00:00:01:02"]})
    assert first["vpcs"] == [{"vpc_id": 1, "generation": 1}]
    [entry] = first["fdb"]
    assert (entry["vni"], entry["mac"], entry["vtep"]) == (101, "02:00:00:00:01:02", "192.0.2.2")
    made = int(entry["since_ms"])
    assert made > 0
    port = state(1, 0, 1, 2, 3)["ports"][2]
    assert call(ctx, "net.show", {"macs": [port["mac"].upper()]})["fdb"] == []  # not yet there
    call(ctx, "net.apply", {"vpc_id": 1, "from_generation": 1, "generation": 2, "upsert_ports": [port]})
    shown = call(ctx, "net.show", {"macs": [port["mac"]]})
    assert shown["vpcs"] == [{"vpc_id": 1, "generation": 2}]
    [added] = shown["fdb"]
    assert (added["mac"], added["vtep"]) == (port["mac"], "192.0.2.3") and int(added["since_ms"]) >= made
    # An entry that stays keeps its time; every entry without a filter; the local port has none.
    everything = call(ctx, "net.show", {})["fdb"]
    assert [e["mac"] for e in everything] == ["02:00:00:00:01:02", port["mac"]]
    assert int(everything[0]["since_ms"]) == made
    call(ctx, "net.apply", {"vpc_id": 1, "from_generation": 2, "generation": 3, "remove_ports": [port["id"]]})
    assert call(ctx, "net.show", {"macs": [port["mac"]]})["fdb"] == []


def test_apply_moves_one_generation_replays_answer_ok_and_gaps_need_a_sync(ctx: ops.Context) -> None:
    call(ctx, "net.sync", {"vpcs": [state(1, 1, 1, 2)]})
    port = state(1, 0, 1, 2, 3)["ports"][2]
    delta = {"vpc_id": 1, "from_generation": 1, "generation": 2, "upsert_ports": [port]}
    assert call(ctx, "net.apply", delta) == {"generation": 2, "need_sync": False}
    assert ("fdb", 101, port["mac"], "192.0.2.3") in network_for(ctx.hypervisor).plane.held
    assert call(ctx, "net.apply", delta) == {"generation": 2, "need_sync": False}  # a replay
    # A delta older than what a sync already brought (queued behind it): OK, and nothing changes.
    older = {"vpc_id": 1, "from_generation": 0, "generation": 1, "remove_ports": [port["id"]]}
    assert call(ctx, "net.apply", older) == {"generation": 2, "need_sync": False}
    assert ("fdb", 101, port["mac"], "192.0.2.3") in network_for(ctx.hypervisor).plane.held
    gap = {"vpc_id": 1, "from_generation": 4, "generation": 5, "remove_ports": [port["id"]]}
    assert call(ctx, "net.apply", gap) == {"generation": 2, "need_sync": True}
    assert call(ctx, "net.apply", dict(gap, vpc_id=9)) == {"generation": 0, "need_sync": True}  # not held
    with pytest.raises(InvalidRequest, match="generation 2 must be above from_generation 2"):
        call(ctx, "net.apply", {"vpc_id": 1, "from_generation": 2, "generation": 2})
    # Removing the last local port removes the subnet here; the VPC is held no more.
    last = {"vpc_id": 1, "from_generation": 2, "generation": 3, "remove_subnets": [10]}
    assert call(ctx, "net.apply", last) == {"generation": 3, "need_sync": False}
    assert network_for(ctx.hypervisor).plane.held == set()
    assert call(ctx, "net.sync", {})["vpcs"] == []


def test_a_full_sync_drops_vpcs_not_listed_and_a_restart_of_the_fake_holds_nothing(ctx: ops.Context) -> None:
    call(ctx, "net.sync", {"vpcs": [state(1, 4, 1, 2), state(2, 9, 1)]})
    partial = call(ctx, "net.sync", {"vpcs": [state(2, 10, 1)]})
    assert partial["vpcs"] == [{"vpc_id": 1, "generation": 4}, {"vpc_id": 2, "generation": 10}]
    # A new agent process on the same state directory: the fake's objects died with the old one,
    # and so did its states (nothing written per apply); its start's full sync brings them. (The
    # kernel's plane keeps them on disk: tests/unit/test_network_plan.py, tests/network/.)
    restarted = Network(ctx.hypervisor, fake=True)
    assert restarted.held.vpcs == {} and not list(restarted.held.directory.glob("vpc-*"))
    assert call(ctx, "net.apply", {"vpc_id": 2, "from_generation": 10, "generation": 11})["generation"] == 11
    assert {v: s.generation for v, s in network_for(ctx.hypervisor).held.vpcs.items()} == {1: 4, 2: 11}
    full = call(ctx, "net.sync", {"full": True, "vpcs": [state(2, 11, 1)]})
    assert full["vpcs"] == [{"vpc_id": 2, "generation": 11}] and full["removed"] == 5
    assert call(ctx, "net.sync", {"vpcs": [{"vpc_id": 2, "generation": 12}]})["vpcs"] == []  # no subnets: removed


def test_bad_input_changes_nothing(ctx: ops.Context) -> None:
    call(ctx, "net.sync", {"vpcs": [state(1, 1, 1, 2)]})
    bad = state(2, 1, 1)
    bad["subnets"][0]["cidr"] = "10.0.0.5/24"
    with pytest.raises(InvalidRequest, match="vpc 2, subnet 20: cidr '10.0.0.5/24' is not an IPv4 network"):
        call(ctx, "net.sync", {"full": True, "vpcs": [bad]})
    clash = state(2, 1, 1)
    clash["subnets"][0]["vni"] = 101
    with pytest.raises(InvalidRequest, match="vni 101"):
        call(ctx, "net.sync", {"vpcs": [clash]})
    assert call(ctx, "net.sync", {"vpcs": [state(1, 1, 1, 2)]})["added"] == 0


def test_a_bad_delta_is_refused_whole_and_changes_nothing(ctx: ops.Context) -> None:
    """An apply checks what its delta brings against the subnets held: a port outside its subnet,
    and a subnet changed so that a port it held falls outside."""
    call(ctx, "net.sync", {"vpcs": [state(1, 1, 1, 2)]})
    held = network_for(ctx.hypervisor).plane.held.copy()
    outside = dict(state(1, 0, 1, 2, 3)["ports"][2], ips=["10.9.0.3"])
    with pytest.raises(InvalidRequest, match=r"vpc 1, port 13: ip '10.9.0.3' is not inside 10.0.0.0/24"):
        call(ctx, "net.apply", {"vpc_id": 1, "from_generation": 1, "generation": 2, "upsert_ports": [outside]})
    narrowed = dict(state(1, 0)["subnets"][0], cidr="10.0.0.0/29")  # its ports' 10.0.0.11 falls outside
    with pytest.raises(InvalidRequest, match=r"vpc 1, port 11: ip '10.0.0.11' is not inside 10.0.0.0/29"):
        call(ctx, "net.apply", {"vpc_id": 1, "from_generation": 1, "generation": 2, "upsert_subnets": [narrowed]})
    bad_mac = dict(state(1, 0, 1, 2, 3)["ports"][2], mac="02:00:00:00:01:GG")
    with pytest.raises(InvalidRequest, match="mac"):
        call(ctx, "net.apply", {"vpc_id": 1, "from_generation": 1, "generation": 2, "upsert_ports": [bad_mac]})
    assert network_for(ctx.hypervisor).plane.held == held
    assert call(ctx, "net.show", {})["vpcs"] == [{"vpc_id": 1, "generation": 1}]


def test_repair_converges_what_is_held_at_once_and_then_periodically(ctx: ops.Context) -> None:
    call(ctx, "net.sync", {"vpcs": [state(1, 1, 1, 2)]})
    network = network_for(ctx.hypervisor)
    assert isinstance(network.plane, FakeDataPlane)
    network.plane.held.clear()  # drift: what the kernel lost behind the agent's back
    stop = threading.Event()
    rounds = []
    real = network.repair

    def counted():  # type: ignore[no-untyped-def]
        rounds.append(real())
        if len(rounds) == 2:
            stop.set()
        return rounds[-1]

    network.repair = counted  # type: ignore[method-assign]
    repair_loop([network], stop, every=0.01)
    assert [(c.added, c.removed, c.unchanged) for c in rounds] == [(5, 0, 0), (0, 0, 5)]


def test_simulated_hypervisors_under_the_fake_get_a_vtep_each_in_the_benchmarking_range() -> None:
    assert [simulated_vtep(hv) for hv in (0, 1, 255, 1000)] == ["198.18.0.1", "198.18.0.2", "198.18.1.0", "198.18.3.233"]
    assert len({simulated_vtep(hv) for hv in range(20_000)}) == 20_000
    assert simulated_vtep(131_069) == "198.19.255.254"
    with pytest.raises(ValueError, match="hypervisor 131070 has no address in 198.18.0.0/15"):
        simulated_vtep(131_070)
