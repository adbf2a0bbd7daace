"""Issue 11's data plane on the real kernel, in a lab of 3 namespace hosts: two tenants with the
same 10.0.0.0/24, a guest of each on every host. Each host runs its own network agent process
(tests/network/netagent.py, the real ``net.*`` handlers) in the host's namespaces, as a leaf
would. One lab for the module; the scenarios run in order and share it.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from cloudland_agents.network.names import Names
from cloudland_proto.v1 import network_pb2 as npb
from tests.network.dataplane import (
    DHCP_ADDRESS,
    STATE_BASE,
    AgentProc,
    Tenant,
    capture,
    captured,
    close_agents,
    in_guest,
    kernel_objects,
    lab_world,
    ping,
    reaches,
    resolve,
)

pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.timeout(300)]

HOSTS = ["h1", "h2", "h3"]


class World:
    def __init__(self, lab, prefix: str) -> None:
        self.lab, self.prefix = lab, prefix
        self.agents = [AgentProc(lab, host, n, prefix, STATE_BASE / f"cloudland-net-{lab.prefix}-{host}")
                       for n, host in enumerate(HOSTS, 1)]
        self.tenants = [Tenant(1, 101, "a", "alpha", HOSTS), Tenant(2, 202, "b", "beta", HOSTS)]
        self.guests: list[tuple[AgentProc, str]] = []

    def states(self) -> list[npb.NetVpcState]:
        return [t.state(self.agents) for t in self.tenants]

    def guest(self, tenant: Tenant, n: int) -> str:
        return f"{self.prefix}g{tenant.letter}{n}"

    def bridge(self, tenant: Tenant) -> str:
        return Names(self.prefix).bridge(tenant.vni)

    def close(self) -> None:
        close_agents(self.agents, self.guests)


@pytest.fixture(scope="module")
def world(session_lab_factory):
    with lab_world(session_lab_factory, HOSTS, ("dnsmasq", "busybox", "tcpdump", "bridge", "nsenter"), "data-plane",
                   World) as made:
        yield made


def test_guests_get_leases_and_reach_their_own_vpc_only(world: World) -> None:
    started = time.monotonic()
    for agent in world.agents:
        result = agent.sync(world.states())
        assert result["removed"] == 0 and result["added"] > 0, result
        assert {v["vpc_id"]: v["generation"] for v in result["vpcs"]} == {1: 1, 2: 1}
    synced = time.monotonic() - started
    for tenant in world.tenants:
        for n, agent in enumerate(world.agents, 1):
            name = world.guest(tenant, n)
            agent.call("guest.plug", name=name, bridge=world.bridge(tenant), mac=tenant.mac(n))
            world.guests.append((agent, name))
            lease = agent.call("guest.dhcp", name=name)["lease"]
            assert (lease["ip"], lease["prefixlen"], lease["mtu"]) == (tenant.ip(n), 24, 1450), lease
            assert lease["router"] == "10.0.0.1" and lease["dns"][0] == DHCP_ADDRESS and lease["domain"] == f"{tenant.word}.test"
    leased = time.monotonic() - started - synced
    lab = world.lab
    # Capture the other tenant's frames on each tenant's bridges while the pings run (a bridge
    # in promiscuous mode passes every frame it forwards to its own taps too).
    captures, controls = {}, {}
    for tenant in world.tenants:
        other = next(t for t in world.tenants if t is not tenant)
        for host in HOSTS:
            captures[(tenant.word, host)] = capture(lab, host, world.bridge(tenant), other.macs(len(HOSTS)))
            controls[(tenant.word, host)] = capture(lab, host, world.bridge(tenant), tenant.macs(len(HOSTS)))  # its own
    time.sleep(1)  # tcpdump is listening
    for tenant in world.tenants:
        for n, (host, agent) in enumerate(zip(HOSTS, world.agents), 1):
            guest = world.guest(tenant, n)
            for m in range(1, len(HOSTS) + 1):
                if m == n:
                    continue
                reaches(lab, host, guest, tenant.ip(m), tenant.name(m), f"{tenant.word}.test")
            other = next(t for t in world.tenants if t is not tenant)
            assert resolve(lab, host, guest, other.name(n)) == "", "another tenant's name resolved"
            # The peer answering 10.0.0.x is this tenant's guest (its MAC), not the other tenant's.
            neigh = lab.run(host, in_guest(guest, "ip", "neigh", "show"), capture_output=True, text=True).stdout
            for m in range(1, len(HOSTS) + 1):
                if m != n:
                    assert re.search(rf"^{re.escape(tenant.ip(m))} .*lladdr {tenant.mac(m)}", neigh, re.M), neigh
    for (word, host), tcpdump in captures.items():
        assert captured(tcpdump) == 0, f"{word}'s bridge on {host} saw the other tenant's frames"
        assert captured(controls[(word, host)]) > 0, f"the capture on {word}'s bridge on {host} saw nothing at all"
    print(f"sync of 3 hosts {synced:.2f} s, 6 leases {leased:.2f} s")


def test_the_same_sync_again_changes_nothing(world: World) -> None:
    for agent in world.agents:
        before = kernel_objects(world.lab, agent.host, world.prefix)
        result = agent.sync(world.states())
        assert (result["added"], result["removed"]) == (0, 0), result
        assert result["unchanged"] > 0
        assert kernel_objects(world.lab, agent.host, world.prefix) == before
    objects = kernel_objects(world.lab, "h1", world.prefix)
    p = world.prefix
    assert objects["links"] == sorted([f"{p}b101", f"{p}v101", f"{p}d101", f"{p}b202", f"{p}v202", f"{p}d202",
                                       f"{p}ga1", f"{p}gb1"])  # the last two: h1's guests' cables
    assert objects["netns"] == sorted([f"{p}d101", f"{p}d202", f"{p}ga1", f"{p}gb1"])
    assert len(objects["fdb"]) == 4 and len(objects["neighbours"]) == 4, objects  # 2 remote ports x 2 tenants
    assert len(objects["dnsmasq"]) == 2


def test_a_sync_repairs_what_was_broken_and_only_that(world: World) -> None:
    lab, h2 = world.lab, world.agents[1]
    alpha = world.tenants[0]
    names = Names(world.prefix)
    before = kernel_objects(lab, "h2", world.prefix)
    dnsmasq = [pid for pid in before["dnsmasq"] if f"{names.dhcp(alpha.vni)}/pid" in
               Path(f"/proc/{pid}/cmdline").read_text()]
    lab.run("h2", f"kill -9 {dnsmasq[0]}; bridge fdb del {alpha.mac(1)} dev {names.vxlan(alpha.vni)} dst {world.agents[0].vtep};"
                  f" ip neigh del {alpha.ip(3)} dev {names.vxlan(alpha.vni)}", check=True)
    result = h2.sync(world.states())
    assert (result["added"], result["removed"]) == (3, 0), result  # dnsmasq, one FDB entry, one neighbour
    after = kernel_objects(lab, "h2", world.prefix)
    assert {k: v for k, v in after.items() if k != "dnsmasq"} == {k: v for k, v in before.items() if k != "dnsmasq"}
    assert len(after["dnsmasq"]) == 2 and dnsmasq[0] not in after["dnsmasq"]
    assert ping(lab, "h2", world.guest(alpha, 2), alpha.ip(1)) and ping(lab, "h2", world.guest(alpha, 2), alpha.ip(3))


def test_apply_at_the_held_generation_and_need_sync_after_a_gap(world: World) -> None:
    alpha = world.tenants[0]
    h3 = world.agents[2]
    port = alpha.port(4, h3.hypervisor, h3.vtep)  # a port bound on h3
    delta = npb.NetApplyRequest(vpc_id=alpha.vpc_id, from_generation=1, generation=2, upsert_ports=[port])
    for agent in world.agents:
        assert agent.apply(delta) == {"generation": 2, "need_sync": False}
        assert agent.apply(delta) == {"generation": 2, "need_sync": False}  # a replay
    gap = npb.NetApplyRequest(vpc_id=alpha.vpc_id, from_generation=5, generation=6, remove_ports=[port.id])
    assert world.agents[0].apply(gap) == {"generation": 2, "need_sync": True}
    assert any(alpha.mac(4) in line for line in kernel_objects(world.lab, "h1", world.prefix)["fdb"])
    # net.show reads the kernel's FDB: h1 has the entry to h3's VTEP, made by this agent just now.
    shown = world.agents[0].call("net.show", request={"macs": [alpha.mac(4)]})["result"]
    [entry] = shown["fdb"]
    assert (entry["vni"], entry["mac"], entry["vtep"]) == (alpha.vni, alpha.mac(4), h3.vtep)
    assert abs(int(entry["since_ms"]) / 1000 - time.time()) < 60
    assert world.agents[2].call("net.show", request={"macs": [alpha.mac(4)]})["result"].get("fdb", []) == []  # local
    assert resolve(world.lab, "h1", world.guest(alpha, 1), alpha.name(4)) == alpha.ip(4)
    # Back to generation 3 without the port, by a delta, everywhere.
    back = npb.NetApplyRequest(vpc_id=alpha.vpc_id, from_generation=2, generation=3, remove_ports=[port.id])
    for agent in world.agents:
        assert agent.apply(back)["generation"] == 3
    alpha.generation = 3
    assert not any(alpha.mac(4) in line for line in kernel_objects(world.lab, "h1", world.prefix)["fdb"])


def test_kill9_of_the_agent_loses_no_packet_and_its_successor_changes_nothing(world: World) -> None:
    lab, alpha = world.lab, world.tenants[0]
    h1, h2 = world.agents[0], world.agents[1]
    before = {agent.host: kernel_objects(lab, agent.host, world.prefix) for agent in (h1, h2)}
    count = 300  # 6 s at 50 per second
    pinger = lab.popen("h1", in_guest(world.guest(alpha, 1), "busybox", "ping", "-i", "0.02", "-c", str(count),
                                      "-W", "5", alpha.ip(2)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1)
    for agent in (h1, h2):
        agent.kill9()
    time.sleep(0.5)
    for agent in (h1, h2):
        agent.start()
        result = agent.sync(world.states())
        assert (result["added"], result["removed"]) == (0, 0), (agent.host, result)
        assert {v["vpc_id"]: v["generation"] for v in result["vpcs"]} == {1: 3, 2: 1}
    restarted = time.monotonic()  # both agents are back (their start is Python's, slow on a busy machine)
    # A port added meanwhile (on h3) is in place on h1 at once.
    alpha.extra = [alpha.port(5, world.agents[2].hypervisor, world.agents[2].vtep)]
    alpha.generation = 4
    result = h1.sync(world.states(), full=False)
    assert result["added"] >= 2 and result["removed"] == 0, result
    in_place = time.monotonic() - restarted
    assert in_place < 5, f"the port took {in_place:.1f} s"
    out, _ = pinger.communicate(timeout=30)
    assert re.search(rf"{count} packets transmitted, {count} packets received", out), out
    for agent in (h1, h2):
        after = kernel_objects(lab, agent.host, world.prefix)
        assert after["links"] == before[agent.host]["links"]
        assert after["dnsmasq"] == before[agent.host]["dnsmasq"]  # the same processes: none restarted
    alpha.extra, alpha.generation = [], 5
    for agent in world.agents:
        agent.sync(world.states())


def test_removing_the_vpcs_removes_every_object(world: World) -> None:
    for agent, name in world.guests:
        agent.call("guest.unplug", name=name)
    world.guests.clear()
    for agent in world.agents:
        result = agent.sync([], full=True)
        assert result["added"] == 0 and result["removed"] > 0 and result["vpcs"] == [], result
        assert kernel_objects(world.lab, agent.host, world.prefix) == {
            "links": [], "netns": [], "fdb": [], "neighbours": [], "dnsmasq": []}
        assert not list((agent.state_dir / "network" / f"{world.prefix}-hv{agent.hypervisor}").glob("vpc-*"))
        again = agent.sync([], full=True)
        assert (again["added"], again["removed"], again["unchanged"]) == (0, 0, 0)
