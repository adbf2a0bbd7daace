"""Issue 12's routers on the real kernel: distributed routing, SNAT and floating IPs, in a lab of
namespace hosts. h1 and h2 are hypervisors, each running its own network agent process
(tests/network/netagent.py, the real ``net.*`` handlers); "inet" is the internet: a host on the
external segment (203.0.113.0/24, a second switch in the lab's switch namespace, plugged into a
provider bridge ``ext0`` on every hypervisor) at 203.0.113.1, the external network's gateway.

Two tenants have the same CIDRs (10.0.1.0/24 and 10.0.2.0/24, one VPC each, one router each);
each has a guest on 10.0.1.0/24 on h1 and one on 10.0.2.0/24 on h2. The scenarios run in order
and share the lab (must-shows 1, 2 and 5 of issue 12).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time

import pytest

from cloudland_agents.network.names import Names
from cloudland_agents.network.router import external_link, gateway_link, gateway_mac, router_ns
from cloudland_proto.v1 import network_pb2 as npb
from tests.network.dataplane import STATE_BASE, AgentProc, close_agents, in_guest, ping, run_prefix

pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.timeout(300)]

HOSTS = ["h1", "h2"]
INTERNET = "203.0.113.1"
EXTERNAL = npb.NetExternal(id=1, cidr="203.0.113.0/24", gateway=INTERNET, bridge="ext0")
SNAT = {("a", "h1"): "203.0.113.11", ("a", "h2"): "203.0.113.12", ("b", "h1"): "203.0.113.13",
        ("b", "h2"): "203.0.113.14"}
FLOATING = "203.0.113.21"


class Tenant:
    """A VPC with subnets 10.0.1.0/24 (its guest 1, on h1) and 10.0.2.0/24 (its guest 2, on h2)."""

    def __init__(self, vpc_id: int, letter: str, last: int) -> None:
        self.vpc_id, self.letter, self.last = vpc_id, letter, last  # last: the guests' last octet
        self.generation = 1
        self.floating = False

    def vni(self, n: int) -> int:
        return self.vpc_id * 100 + n

    def mac(self, n: int) -> str:
        return f"02:{self.letter * 2}:00:00:01:{n:02x}"

    def ip(self, n: int) -> str:
        return f"10.0.{n}.{self.last}"

    def subnet(self, n: int) -> npb.NetSubnet:
        return npb.NetSubnet(id=self.vpc_id * 10 + n, vpc_id=self.vpc_id, vni=self.vni(n), cidr=f"10.0.{n}.0/24",
                             gateway=f"10.0.{n}.1", dhcp=True)

    def state(self, agents: list[AgentProc], hypervisor: int) -> npb.NetVpcState:
        ports = [npb.NetPort(id=self.vpc_id * 100 + n, subnet_id=self.vpc_id * 10 + n, mac=self.mac(n),
                             ips=[self.ip(n)], hostname=f"{self.letter}{n}", instance_id=n,
                             hypervisor=agent.hypervisor, vtep=agent.vtep) for n, agent in enumerate(agents, 1)]
        host = next(a.host for a in agents if a.hypervisor == hypervisor)
        router = npb.NetRouter(id=self.vpc_id, subnet_ids=[self.vpc_id * 10 + 1, self.vpc_id * 10 + 2],
                               external=EXTERNAL, snat_address=SNAT[(self.letter, host)])
        if self.floating:
            router.floating_ips.append(npb.NetFloatingIp(id=1, address=FLOATING, port_id=ports[1].id,
                                                         fixed_ip=self.ip(2)))
        return npb.NetVpcState(vpc_id=self.vpc_id, generation=self.generation, mtu=1450, domain=f"{self.letter}.test",
                               subnets=[self.subnet(1), self.subnet(2)], ports=ports, router=router)


class World:
    def __init__(self, lab, prefix: str) -> None:
        self.lab, self.prefix = lab, prefix
        self.agents = [AgentProc(lab, host, n, prefix, STATE_BASE / f"cloudland-rt-{lab.prefix}-{host}")
                       for n, host in enumerate(HOSTS, 1)]
        self.tenants = [Tenant(1, "a", 11), Tenant(2, "b", 11)]
        self.tenants[1].last = 12  # b's guests: 10.0.1.12 and 10.0.2.12; a's: .11 (a's 10.0.2.11 is not b's)
        self.guests: list[tuple[AgentProc, str]] = []

    def sync(self, agent: AgentProc) -> dict:
        return agent.sync([t.state(self.agents, agent.hypervisor) for t in self.tenants])

    def guest(self, tenant: Tenant, n: int) -> str:
        return f"{self.prefix}g{tenant.letter}{n}"

    def inet(self, argv: str, **kwargs) -> subprocess.CompletedProcess:
        return self.lab.run("inet", argv, capture_output=True, text=True, timeout=60, **kwargs)

    def inet_ping(self, target: str, count: int = 1) -> bool:
        return inet_answers(self.lab, target, count)

    def close(self) -> None:
        close_agents(self.agents, self.guests)


def external_segment(lab, hosts: list[str] = HOSTS) -> None:
    """A second switch in the lab's switch namespace: each hypervisor's provider bridge ``ext0``
    plugged into it, and the internet host's ``eth1`` at 203.0.113.1."""
    switch = f"{lab.prefix}-sw"
    run = lambda command: subprocess.run(command, shell=True, check=True, capture_output=True, text=True)  # noqa: E731
    run(f"ip -n {switch} link add xbr type bridge && ip -n {switch} link set xbr up")
    for host in [*hosts, "inet"]:
        inner = "eth1" if host == "inet" else "ext0p"
        run(f"ip -n {switch} link add x{host} type veth peer name {inner} netns {lab.prefix}-{host}")
        run(f"ip -n {switch} link set x{host} master xbr up")
        if host == "inet":
            lab.run(host, f"ip addr add {INTERNET}/24 dev eth1 && ip link set eth1 up && "
                          "sysctl -qw net.ipv4.conf.all.arp_accept=1 net.ipv4.conf.eth1.arp_accept=1", check=True)
        else:
            lab.run(host, "ip link add ext0 type bridge && ip link set ext0p master ext0 up && ip link set ext0 up",
                    check=True)


@pytest.fixture(scope="module")
def world(session_lab_factory):
    missing = [tool for tool in ("dnsmasq", "busybox", "tcpdump", "bridge", "nsenter", "nft") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"the router tests need {', '.join(missing)} (deploy/bootstrap.sh installs them, as root)")
    lab = session_lab_factory([*HOSTS, "inet"])
    external_segment(lab)
    world = World(lab, run_prefix())
    try:
        yield world
    finally:
        world.close()


def seen_from(world: World, host: str, guest: str, target: str) -> set[str]:
    """The source addresses of the pings from ``guest`` to ``target`` that the internet saw."""
    return sources_seen(world.lab, host, guest, target)


def inet_answers(lab, target: str, count: int = 1) -> bool:
    """Whether the internet's pings to ``target`` are answered (all of them)."""
    done = lab.run("inet", f"busybox ping -c {count} -i 0.2 -W 1 {target}", capture_output=True, text=True, timeout=60)
    assert done.returncode in (0, 1), done.stderr  # 1: not answered; anything else: the test is broken
    return done.returncode == 0


def sources_seen(lab, host: str, guest: str, target: str) -> set[str]:
    """The source addresses of the pings from ``guest`` on ``host`` to ``target`` that the internet saw."""
    dump = lab.popen("inet", ["tcpdump", "-i", "eth1", "-n", "-l", "icmp[icmptype] == icmp-echo"],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    answered = ping(lab, host, guest, target, count=3)
    time.sleep(0.3)
    dump.send_signal(2)
    out, _ = dump.communicate(timeout=10)
    assert answered, f"{guest} on {host} cannot reach {target}: {out}"
    return set(re.findall(r"IP (\d+\.\d+\.\d+\.\d+) > ", out))


def test_guests_route_between_subnets_and_reach_the_internet_by_snat(world: World) -> None:
    for agent in world.agents:
        result = world.sync(agent)
        assert result["removed"] == 0 and result["added"] > 0, result
    for tenant in world.tenants:
        for n, agent in enumerate(world.agents, 1):
            name = world.guest(tenant, n)
            agent.call("guest.plug", name=name, bridge=Names(world.prefix).bridge(tenant.vni(n)), mac=tenant.mac(n))
            world.guests.append((agent, name))
            lease = agent.call("guest.dhcp", name=name)["lease"]
            assert (lease["ip"], lease["router"]) == (tenant.ip(n), f"10.0.{n}.1"), lease
    lab = world.lab
    a, b = world.tenants
    # Must-show 2: across subnets and hosts, each way; never into the other tenant's VPC.
    assert ping(lab, "h1", world.guest(a, 1), a.ip(2)) and ping(lab, "h2", world.guest(a, 2), a.ip(1))
    assert ping(lab, "h1", world.guest(b, 1), b.ip(2)) and ping(lab, "h2", world.guest(b, 2), b.ip(1))
    assert not ping(lab, "h1", world.guest(a, 1), b.ip(2), count=1), "a reached b's 10.0.2.12"
    assert not ping(lab, "h1", world.guest(b, 1), a.ip(2), count=1), "b reached a's 10.0.2.11"
    # Must-show 1: outbound by SNAT, as the router's address on the guest's own hypervisor.
    assert seen_from(world, "h1", world.guest(a, 1), INTERNET) == {SNAT[("a", "h1")]}
    assert seen_from(world, "h2", world.guest(a, 2), INTERNET) == {SNAT[("a", "h2")]}
    assert seen_from(world, "h2", world.guest(b, 2), INTERNET) == {SNAT[("b", "h2")]}


def test_the_gateway_stays_local_to_each_host(world: World) -> None:
    """The gateway MAC of 10.0.2.0/24 is the same on both hosts; h1's router sends frames with it
    as source to h2 (a's guest 1 pings guest 2), and h2's bridge keeps it on its own router's port."""
    a = world.tenants[0]
    assert ping(world.lab, "h1", world.guest(a, 1), a.ip(2))
    mac = gateway_mac(a.vni(2))
    for host in HOSTS:
        fdb = world.lab.run(host, f"bridge fdb show br {Names(world.prefix).bridge(a.vni(2))}", capture_output=True,
                            text=True, check=True).stdout
        lines = [line for line in fdb.splitlines() if line.startswith(mac)]
        assert lines and all(f"dev {gateway_link(world.prefix, a.vni(2))} " in line for line in lines), (host, fdb)
        assert any("sticky" in line for line in lines), (host, fdb)


def test_the_internet_reaches_a_guest_only_through_its_floating_ip(world: World) -> None:
    a = world.tenants[0]
    lab = world.lab
    # Without a floating IP: not by the address, not even by a route to the fixed address.
    assert not world.inet_ping(FLOATING)
    world.inet(f"ip route replace 10.0.2.0/24 via {SNAT[('a', 'h2')]}", check=True)
    assert not world.inet_ping(a.ip(2)), "the internet reached a fixed address"
    world.inet(f"ip neigh flush to {FLOATING}", check=True)  # the failed ping's entry: the ARP below must make it
    a.floating, a.generation = True, 2
    for agent in world.agents:
        result = world.sync(agent)
        assert result["removed"] == 0, result
    # A gratuitous ARP told the segment where the floating IP is: the internet has its neighbour entry.
    link = lab.run("h2", in_guest(router_ns(world.prefix, a.vpc_id), "ip", "-o", "link", "show", "x0"),
                   capture_output=True, text=True).stdout
    router_mac = re.search(r"link/ether ([0-9a-f:]{17})", link)[1]
    neigh = world.inet(f"ip neigh show {FLOATING}").stdout
    assert router_mac and router_mac in neigh, (router_mac, neigh)
    assert world.inet_ping(FLOATING, count=3)
    assert seen_from(world, "h2", world.guest(a, 2), INTERNET) == {FLOATING}
    assert seen_from(world, "h1", world.guest(a, 1), INTERNET) == {SNAT[("a", "h1")]}  # the others still SNAT
    assert not world.inet_ping(a.ip(2))
    # Disassociated: unreachable again, a flow under way included (its conntrack entries go).
    # No bound on how long the syncs take (the machine may be loaded): a reply's sequence number
    # says when its echo was sent (no earlier than seq x interval after the start), and none sent
    # after the syncs returned may be answered.
    interval = 0.2
    pinger = lab.popen("inet", ["busybox", "ping", "-i", str(interval), "-W", "1", FLOATING],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    started = time.monotonic()
    time.sleep(1.5)
    a.floating, a.generation = False, 3
    for agent in world.agents:
        world.sync(agent)
    synced = time.monotonic() - started
    assert not world.inet_ping(FLOATING)
    time.sleep(1.0 + 5 * interval)  # echoes sent after the syncs: each had its chance to be answered
    pinger.send_signal(signal.SIGINT)
    out, _ = pinger.communicate(timeout=30)
    answered = [int(seq) for seq in re.findall(r"seq=(\d+)", out)]
    assert answered, out  # answered until the disassociation
    assert max(answered) * interval <= synced, (synced, out)  # and not after
    sent = int(re.search(r"(\d+) packets transmitted", out)[1])
    assert sent > max(answered) + 2, out  # the flow went on after it, unanswered
    assert seen_from(world, "h2", world.guest(a, 2), INTERNET) == {SNAT[("a", "h2")]}


def test_the_same_sync_again_changes_nothing(world: World) -> None:
    for agent in world.agents:
        ruleset = rules(world, agent.host)
        result = world.sync(agent)
        assert (result["added"], result["removed"]) == (0, 0), result
        assert rules(world, agent.host) == ruleset


def rules(world: World, host: str) -> dict[int, str]:
    """Each tenant's router table on ``host`` with its handles (a rewrite changes them)."""
    return {t.vpc_id: world.lab.run(host, in_guest(router_ns(world.prefix, t.vpc_id), "nft", "-a", "list", "ruleset"),
                                    capture_output=True, text=True, check=True).stdout for t in world.tenants}


def test_kill9_of_the_agents_loses_no_packet_through_snat_or_a_floating_ip(world: World) -> None:
    lab, a = world.lab, world.tenants[0]
    a.floating, a.generation = True, 4
    for agent in world.agents:
        world.sync(agent)
    before = {agent.host: rules(world, agent.host) for agent in world.agents}
    count = 300  # 6 s at 50 per second
    inbound = lab.popen("inet", ["busybox", "ping", "-i", "0.02", "-c", str(count), "-W", "5", FLOATING],
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    outbound = lab.popen("h1", in_guest(world.guest(a, 1), "busybox", "ping", "-i", "0.02", "-c", str(count), "-W", "5",
                                        INTERNET), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1)
    for agent in world.agents:
        agent.kill9()
    time.sleep(0.5)
    for agent in world.agents:
        agent.start()
        result = world.sync(agent)
        assert (result["added"], result["removed"]) == (0, 0), (agent.host, result)
    for pinger in (inbound, outbound):
        out, _ = pinger.communicate(timeout=60)
        assert re.search(rf"{count} packets transmitted, {count} packets received", out), out
    assert {agent.host: rules(world, agent.host) for agent in world.agents} == before


def test_a_port_that_arrives_by_delta_on_a_routed_subnet_is_served_and_routed(world: World) -> None:
    """h2 held a's 10.0.1.0/24 for its router only (no guest, no DHCP server); a delta brings a port
    of it bound to h2: h2 now serves its lease, and it is reached from both subnets."""
    lab, a = world.lab, world.tenants[0]
    h1, h2 = world.agents
    port = npb.NetPort(id=a.vpc_id * 100 + 3, subnet_id=a.vpc_id * 10 + 1, mac=a.mac(3), ips=["10.0.1.21"],
                       hostname="a3", instance_id=3, hypervisor=h2.hypervisor, vtep=h2.vtep)
    delta = npb.NetApplyRequest(vpc_id=a.vpc_id, from_generation=a.generation, generation=a.generation + 1,
                                upsert_ports=[port])
    for agent in world.agents:
        assert agent.apply(delta) == {"generation": a.generation + 1, "need_sync": False}
    a.generation += 1
    name = f"{world.prefix}ga3"
    h2.call("guest.plug", name=name, bridge=Names(world.prefix).bridge(a.vni(1)), mac=a.mac(3))
    world.guests.append((h2, name))
    lease = h2.call("guest.dhcp", name=name)["lease"]
    assert (lease["ip"], lease["router"]) == ("10.0.1.21", "10.0.1.1"), lease
    assert ping(lab, "h1", world.guest(a, 1), "10.0.1.21")  # the same subnet, across hosts
    assert ping(lab, "h2", world.guest(a, 2), "10.0.1.21")  # routed by h2's router, on h2


def test_removing_the_routers_removes_their_namespaces_and_links(world: World) -> None:
    """... and only theirs: a link of a router veth's name whose peer is in no router namespace
    of the agent's (someone else's veth, or a bridge) survives a full convergence."""
    for agent, name in world.guests:
        agent.call("guest.unplug", name=name)
    world.guests.clear()
    foreign = [gateway_link(world.prefix, 4242), external_link(world.prefix, 4243)]
    for agent in world.agents:
        world.lab.run(agent.host, f"ip link add {foreign[0]} type veth peer name {world.prefix}fp && "
                                  f"ip link add {foreign[1]} type bridge", check=True)
    for agent in world.agents:
        result = agent.sync([], full=True)
        assert result["removed"] > 0, result
        netns = world.lab.run(agent.host, "ls /run/netns", capture_output=True, text=True).stdout.split()
        assert not [n for n in netns if n.startswith(world.prefix)], netns
        links = world.lab.run(agent.host, "ip -o link show", capture_output=True, text=True).stdout
        for tenant in world.tenants:
            assert external_link(world.prefix, tenant.vpc_id) not in links
            assert gateway_link(world.prefix, tenant.vni(1)) not in links
        for name in foreign:
            assert f" {name}@" in links or f" {name}:" in links, (name, links)
        again = agent.sync([], full=True)
        assert again["removed"] == 0, again
        world.lab.run(agent.host, f"ip link del {foreign[0]} && ip link del {foreign[1]}", check=True)


def test_a_foreign_link_where_a_routers_veth_must_go_is_named_not_deleted(world: World) -> None:
    """A link of the name a router's veth needs, not ours (its peer is in no router namespace of
    the agent's): the sync fails naming it, and the link is still there."""
    agent, tenant = world.agents[0], world.tenants[0]
    taken = gateway_link(world.prefix, tenant.vni(1))
    world.lab.run(agent.host, f"ip link add {taken} type veth peer name {world.prefix}fr", check=True)
    try:
        with pytest.raises(AssertionError, match=rf"link {taken} \(index \d+\) has the name of a router's veth"):
            agent.sync([tenant.state(world.agents, agent.hypervisor)])
        links = world.lab.run(agent.host, "ip -o link show", capture_output=True, text=True).stdout
        assert f" {taken}@" in links, links
    finally:
        world.lab.run(agent.host, f"ip link del {taken}", check=False)
        agent.sync([], full=True)
