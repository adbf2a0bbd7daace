"""The data plane driven through the tree (issue 11, must-show 2): a cluster on 3 lab hosts, one
hypervisor each, whose leaves run the kernel's data plane (CLOUDLAND_NETWORK=kernel). ``net.sync``
travels from a RootClient to each leaf; a continuous 50 pps ping between guests on two hosts
loses nothing while the leaf ranks of both hosts are killed with SIGKILL and respawned by their
host agents, and the respawned leaves' sync changes nothing. One cluster for the module.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time

import pytest

from cloudland import operations
from cloudland_proto.v1 import envelope_pb2 as pb
from cloudland_proto.v1 import network_pb2 as npb
from tests.multihost.cluster import LabCloud, kill, ranks, wait_until
from tests.network.dataplane import REPO, Tenant, in_guest, kernel_cloud, kernel_objects, run_prefix

pytestmark = [pytest.mark.mpi, pytest.mark.slow, pytest.mark.root, pytest.mark.lab, pytest.mark.timeout(600)]

HOSTS = ["h1", "h2", "h3"]
# Runs inside a host: plug a guest into a bridge and take its lease (agents/network/guest.py).
GUEST = """
import dataclasses, json, sys
from pyroute2 import IPRoute
from cloudland_agents.network.guest import Guest
name, bridge, mac = sys.argv[1:4]
with IPRoute() as host:
    print(json.dumps(dataclasses.asdict(Guest(host, name, bridge, mac).plug().dhcp())))
"""


class TreeWorld:
    def __init__(self, cloud: LabCloud, prefix: str) -> None:
        self.cloud, self.lab, self.prefix = cloud, cloud.lab, prefix
        ids = cloud.host_ids()
        self.hv = {host: ids[host][0] for host in HOSTS}
        self.tenant = Tenant(1, 301, "c", "gamma", HOSTS)

    def ports(self) -> list[npb.NetPort]:
        return [self.tenant.port(n, self.hv[host], self.lab.address(host)) for n, host in enumerate(HOSTS, 1)]

    def sync(self, host: str, full: bool = True, extra: list[npb.NetPort] | None = None) -> npb.NetSyncResult:
        t = self.tenant
        subnet = npb.NetSubnet(id=11, vpc_id=t.vpc_id, vni=t.vni, cidr="10.0.0.0/24", dhcp=True)
        state = npb.NetVpcState(vpc_id=t.vpc_id, generation=t.generation, mtu=1450, domain="gamma.test",
                                subnets=[subnet], ports=self.ports() + (extra or []))
        return self.run(host, npb.NetSyncRequest(vpcs=[state], full=full))

    def run(self, host: str, request: npb.NetSyncRequest) -> npb.NetSyncResult:
        assert self.cloud.client is not None
        (reply,) = self.cloud.client.run("net.sync", self.hv[host], request=request, timeout=30)
        assert reply.status == pb.OK, reply.error
        result = operations.result_of(reply, "net.sync")
        assert isinstance(result, npb.NetSyncResult)
        return result

    def guest(self, host: str) -> str:
        # g, the tenant's letter, then n (as test_dataplane's): never a name the agent owns. A bare
        # <prefix>g<n> is a router's gateway host end (router.parse), which a whole convergence
        # without that router deletes as stray, and the guest's eth0 with it.
        return f"{self.prefix}g{self.tenant.letter}{HOSTS.index(host) + 1}"


@pytest.fixture(scope="module")
def world(session_lab_factory):
    if shutil.which("dnsmasq") is None or shutil.which("busybox") is None:
        pytest.skip("needs dnsmasq and busybox (deploy/bootstrap.sh installs them, as root)")
    lab = session_lab_factory(["ctl", *HOSTS])
    prefix = run_prefix()
    try:
        with kernel_cloud(lab, HOSTS, prefix) as cloud:
            yield TreeWorld(cloud, prefix)
    finally:
        lab.down()


def test_reports_carry_each_hosts_vtep(world: TreeWorld) -> None:
    assert world.cloud.client is not None
    reports = {r.hypervisor: r.vtep for r in world.cloud.client.health(reports=True).reports}
    assert {host: reports[hv] for host, hv in world.hv.items()} == {h: world.lab.address(h) for h in HOSTS}


def test_kill9_of_leaf_ranks_loses_no_packet_and_their_successors_change_nothing(world: TreeWorld) -> None:
    lab, tenant = world.lab, world.tenant
    for host in HOSTS:
        first = world.sync(host)
        assert first.added > 0 and first.removed == 0, first
    for n, host in enumerate(HOSTS, 1):
        done = lab.run(host, [sys.executable, "-c", GUEST, world.guest(host), f"{world.prefix}b{tenant.vni}",
                              tenant.mac(n)], cwd=str(REPO), capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["ip"] == tenant.ip(n)
    before = {host: kernel_objects(lab, host, world.prefix) for host in ("h1", "h2")}
    count = 400  # 8 s at 50 per second
    pinger = lab.popen("h1", in_guest(world.guest("h1"), "busybox", "ping", "-i", "0.02", "-c", str(count), "-W", "5",
                                      tenant.ip(2)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1)
    old = {host: ranks(lab, host, "cloudland_agents.leaf") for host in ("h1", "h2")}
    assert all(old.values()), old
    kill([pid for pids in old.values() for pid in pids])
    back = wait_until(lambda: world.cloud.answering([world.hv["h1"], world.hv["h2"]]), 30, "the leaves to come back")
    returned = time.monotonic()
    for host in ("h1", "h2"):
        assert set(ranks(lab, host, "cloudland_agents.leaf")).isdisjoint(old[host])
        again = world.sync(host)
        assert (again.added, again.removed) == (0, 0), (host, again)
    # A port added while they were away (bound on h3) is in place on h1 at once.
    tenant.generation = 2
    extra = [tenant.port(4, world.hv["h3"], lab.address("h3"))]
    assert world.sync("h1", extra=extra).added >= 2
    in_place = time.monotonic() - returned
    assert any(tenant.mac(4) in line for line in kernel_objects(lab, "h1", world.prefix)["fdb"])
    out, _ = pinger.communicate(timeout=60)
    assert re.search(rf"{count} packets transmitted, {count} packets received", out), out
    for host in ("h1", "h2"):
        after = kernel_objects(lab, host, world.prefix)
        assert (after["links"], after["dnsmasq"]) == (before[host]["links"], before[host]["dnsmasq"])
    print(f"leaves back in {back:.1f} s; the new port in place {in_place:.2f} s after")


def test_an_empty_full_sync_through_the_tree_removes_everything(world: TreeWorld) -> None:
    for host in HOSTS:
        lab_guest = world.guest(host)
        world.lab.run(host, f"ip link del {lab_guest}; ip netns del {lab_guest}", check=True)
        result = world.run(host, npb.NetSyncRequest(full=True))
        assert result.removed > 0 and not result.vpcs
        assert kernel_objects(world.lab, host, world.prefix) == {
            "links": [], "netns": [], "fdb": [], "neighbours": [], "dnsmasq": []}
