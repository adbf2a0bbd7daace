"""Routers and floating IPs end to end through the API (issue 12, must-shows 1 and 2): a cluster on
two lab hosts whose leaves run the kernel's data plane, the "internet" host on the external
segment (tests/network/test_routers.py ``external_segment``). The operator defines the external
network; a tenant makes a VPC with two subnets, a router connecting both with its gateway there,
and a VM on each subnet, one per host, all by ``POST``. The VMs route to each other across
subnets and hosts; each reaches the internet as its own hypervisor's SNAT address of the router;
the internet reaches a VM through its floating IP only while it is associated. A second tenant
with the same CIDR and a VM at the same address on the same host has its own router and SNAT
address, and never reaches the first tenant's VPC.
"""

from __future__ import annotations

import shutil
import time

import pytest

from tests.multihost.cluster import wait_until
from tests.network.dataplane import in_guest, kernel_cloud, ping, run_prefix
from tests.network.test_routers import INTERNET, external_segment, inet_answers, sources_seen
from tests.network.test_vms import World

pytestmark = [pytest.mark.mpi, pytest.mark.slow, pytest.mark.root, pytest.mark.lab, pytest.mark.timeout(900)]

HOSTS = ["h1", "h2"]


@pytest.fixture(scope="module")
def world(session_lab_factory):
    missing = [tool for tool in ("dnsmasq", "busybox", "tcpdump", "bridge", "nsenter", "setsid", "nft")
               if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (deploy/bootstrap.sh installs them, as root)")
    lab = session_lab_factory(["ctl", *HOSTS, "inet"])
    external_segment(lab, HOSTS)
    prefix = run_prefix()
    try:
        with kernel_cloud(lab, HOSTS, prefix) as cloud:
            assert cloud.cloud is not None
            cloud.cloud.wait_hypervisors(len(HOSTS))
            yield World(cloud, prefix)
    finally:
        lab.down()


def test_vms_behind_a_router_route_reach_the_internet_and_answer_on_a_floating_ip(world: World) -> None:
    world.operator.post("/external-networks", {"name": "public", "cidr": "203.0.113.0/24", "bridge": "ext0",
                                               "allocation_pools": [{"start": "203.0.113.10", "end": "203.0.113.50"}]})
    alpha = world.tenant("alpha")  # VPC "net", subnet "lan" 10.0.0.0/24
    api = alpha.api
    api.post("/subnets", {"name": "back", "vpc": alpha.vpc["id"], "cidr": "10.0.2.0/24"})
    router = api.post("/routers", {"name": "edge", "vpc": alpha.vpc["id"]})
    for subnet in ("lan", "back"):
        api.post(f"/routers/{router['id']}/subnets", {"subnet": subnet})
    api.request("PUT", f"/routers/{router['id']}/gateway", {"external_network": "public"})
    started = time.monotonic()
    for host, subnet in (("h1", "lan"), ("h2", "back")):
        world.enable_only(host)
        batch = api.post("/instances", {"name": f"vm-{host}", "flavor": "small", "image": "tiny", "networks": [subnet]})
        assert api.wait_batch(batch["batch"], 1)["succeeded"] == 1, [
            (j["action"], j["reason"]) for j in api.jobs(batch["batch"], "failed")]
        [vm] = batch["instances"]
        [alpha.ports[host]] = [p for p in api.get("/ports")["items"] if p["instance_id"] == vm["id"]]
    for hv in world.hv.values():
        world.operator.patch(f"/hypervisors/{hv}", {"enabled": True})
    for host in HOSTS:
        wait_until(lambda: world.address_of(alpha, host) == alpha.ip(host), 30, f"the VM on {host} to get its lease")
    leased = time.monotonic() - started
    lab = world.lab
    g1, g2 = world.guest(alpha, "h1"), world.guest(alpha, "h2")
    # Must-show 2: across subnets and hosts, routed on each sender's own hypervisor.
    wait_until(lambda: ping(lab, "h1", g1, alpha.ip("h2"), count=1), 30, "vm-h1 to reach vm-h2 across subnets")
    assert ping(lab, "h2", g2, alpha.ip("h1"))
    # Must-show 1: outbound as the router's SNAT address on the VM's own hypervisor.
    snat = {s["hypervisor_id"]: s["address"] for s in api.get(f"/routers/{router['id']}")["snat_addresses"]}
    assert sorted(snat) == sorted(world.hv.values()), snat
    assert sources_seen(lab, "h1", g1, INTERNET) == {snat[world.hv["h1"]]}
    assert sources_seen(lab, "h2", g2, INTERNET) == {snat[world.hv["h2"]]}
    # The default security group lets in only its own members: pings from the internet need a rule.
    api.post("/security-groups/default/rules", {"protocol": "icmp", "remote_cidr": "0.0.0.0/0"})
    fip = api.post("/floating-ips", {"external_network": "public"})
    assert not inet_answers(lab, fip["address"])
    started = time.monotonic()
    api.request("PUT", f"/floating-ips/{fip['id']}/port", {"port": alpha.ports["h2"]["id"]})
    wait_until(lambda: inet_answers(lab, fip["address"]), 30, "the floating IP to answer")
    associated = time.monotonic() - started
    assert sources_seen(lab, "h2", g2, INTERNET) == {fip["address"]}
    api.request("DELETE", f"/floating-ips/{fip['id']}/port")
    wait_until(lambda: not inet_answers(lab, fip["address"]), 30, "the floating IP to stop answering")
    assert sources_seen(lab, "h2", g2, INTERNET) == {snat[world.hv["h2"]]}
    neigh = lab.run("h1", in_guest(g1, "ip", "neigh", "show", "10.0.0.1"), capture_output=True, text=True).stdout
    assert "02:c0:" in neigh, neigh  # the gateway's MAC, the same on every host
    # Another tenant, the same CIDR, a VM at the same address on the same host: its own router,
    # its own SNAT address, and no way into alpha's VPC.
    beta = world.tenant("beta")
    edge = beta.api.post("/routers", {"name": "edge", "vpc": beta.vpc["id"]})
    beta.api.post(f"/routers/{edge['id']}/subnets", {"subnet": "lan"})
    beta.api.request("PUT", f"/routers/{edge['id']}/gateway", {"external_network": "public"})
    world.enable_only("h1")
    batch = beta.api.post("/instances", {"name": "vm-b", "flavor": "small", "image": "tiny", "networks": ["lan"]})
    assert beta.api.wait_batch(batch["batch"], 1)["succeeded"] == 1
    for hv in world.hv.values():
        world.operator.patch(f"/hypervisors/{hv}", {"enabled": True})
    [beta.ports["h1"]] = [p for p in beta.api.get("/ports")["items"] if p["instance_id"] == batch["instances"][0]["id"]]
    assert beta.ip("h1") == alpha.ip("h1")
    wait_until(lambda: world.address_of(beta, "h1") == beta.ip("h1"), 30, "beta's VM to get its lease")
    gb = world.guest(beta, "h1")
    beta_snat = beta.api.get(f"/routers/{edge['id']}")["snat_addresses"]
    assert [s["hypervisor_id"] for s in beta_snat] == [world.hv["h1"]]
    assert sources_seen(lab, "h1", gb, INTERNET) == {beta_snat[0]["address"]} != {snat[world.hv["h1"]]}
    assert sources_seen(lab, "h1", g1, INTERNET) == {snat[world.hv["h1"]]}  # alpha's 10.0.0.2, at the same time
    assert not ping(lab, "h1", gb, alpha.ip("h2"), count=1), "beta reached alpha's other subnet"
    print(f"2 VMs behind a router: leases {leased:.1f} s; a floating IP answered {associated:.1f} s after its association")
