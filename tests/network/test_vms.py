"""VM NICs end to end through the API (issue 11, must-shows 1 and 3): a cluster on 3 lab hosts,
one hypervisor each, whose leaves run the kernel's data plane; two tenants (organisations), each
with a VPC on 10.0.0.0/24, create VMs on every host by ``POST /instances --network``. Each VM's
NIC is a test guest on its host (agents/compute/nics.py): it takes its lease from the subnet's
dnsmasq and pings every VM of its tenant, by address and by name, while captures on the other
tenant's bridges see none of its frames. A leaf killed with SIGKILL comes back, its VMs are
defined again by the reconciler, and their guests were never touched (a 50 pps ping across hosts
loses nothing). Deleting the VMs, subnets and VPCs through the API leaves nothing on any host.
One cluster for the module.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

import httpx2 as httpx
import pytest

from tests.integration.cloud import API, Cloud
from tests.multihost.cluster import API_PORT, LabCloud, kill, ranks, wait_until
from tests.network.dataplane import (
    capture,
    captured,
    in_guest,
    kernel_cloud,
    kernel_objects,
    ping,
    reaches,
    resolve,
    run_prefix,
)

pytestmark = [pytest.mark.mpi, pytest.mark.slow, pytest.mark.root, pytest.mark.lab, pytest.mark.timeout(900)]

HOSTS = ["h1", "h2", "h3"]
PASSWORD = "a-long-enough-password-1"


@dataclass
class Tenant:
    """One organisation: its admin's API client, its VPC and subnet, a VM on each host."""

    word: str
    api: Cloud
    subnet: dict[str, Any] = field(default_factory=dict)
    vpc: dict[str, Any] = field(default_factory=dict)
    vms: dict[str, dict[str, Any]] = field(default_factory=dict)  # host -> instance
    ports: dict[str, dict[str, Any]] = field(default_factory=dict)  # host -> its VM's port

    def name(self, host: str) -> str:
        return f"{self.word}{HOSTS.index(host) + 1}"

    def ip(self, host: str) -> str:
        return str(self.ports[host]["fixed_ips"][0])


class World:
    def __init__(self, cloud: LabCloud, prefix: str) -> None:
        self.cloud, self.lab, self.prefix = cloud, cloud.lab, prefix
        ids = cloud.host_ids()
        self.hv = {host: hvs[0] for host, hvs in sorted(ids.items()) if hvs}  # the hypervisor of each host
        self.tenants: list[Tenant] = []

    @property
    def operator(self) -> Cloud:
        assert self.cloud.cloud is not None
        return self.cloud.cloud

    def tenant(self, word: str) -> Tenant:
        """A new organisation ``word`` with its admin logged in, a flavor, an image, a VPC and a subnet."""
        self.operator.post("/organisations", {"name": word, "admin": {"username": f"{word}-admin",
                                                                       "password": PASSWORD}})
        base = f"http://{self.cloud.ctl}:{API_PORT}{API}"
        http = httpx.Client(base_url=base, timeout=60)
        reply = http.post("/login", json={"username": f"{word}-admin", "password": PASSWORD, "organisation": word})
        assert reply.status_code == 200, reply.text
        http.headers["Authorization"] = f"Bearer {reply.json()['token']}"
        api = Cloud(self.operator.tree, self.cloud.state_dir, "")
        api.http = http
        api.bootstrap()
        tenant = Tenant(word, api)
        tenant.vpc = api.post("/vpcs", {"name": "net"})
        tenant.subnet = api.post("/subnets", {"name": "lan", "vpc": tenant.vpc["id"], "cidr": "10.0.0.0/24"})
        self.tenants.append(tenant)
        return tenant

    def bridge(self, tenant: Tenant) -> str:
        return f"{self.prefix}b{tenant.subnet['vni']}"

    def guest(self, tenant: Tenant, host: str) -> str:
        """The test guest playing the NIC of ``tenant``'s VM on ``host``."""
        return self.guest_of(tenant.ports[host])

    def guest_of(self, port: dict[str, Any]) -> str:
        """The test guest playing a port's NIC: named by its MAC, as its tap would be."""
        return f"{self.prefix}t{port['mac'][6:].replace(':', '')}"

    def address_of(self, tenant: Tenant, host: str) -> str:
        return self.address_in(host, self.guest(tenant, host))

    def address_in(self, host: str, guest: str) -> str:
        """The IPv4 address the guest's eth0 has now ("" before its lease)."""
        done = self.lab.run(host, in_guest(guest, "ip", "-4", "-o", "address", "show", "eth0"),
                            capture_output=True, text=True, timeout=30)
        found = re.search(r"inet ([0-9.]+)/", done.stdout)
        return found[1] if found else ""

    def enable_only(self, host: str) -> None:
        """Only ``host``'s hypervisor takes new VMs: each host gets its VMs whatever the weigher prefers."""
        for name, hv in self.hv.items():
            self.operator.patch(f"/hypervisors/{hv}", {"enabled": name == host})

    def guest_state(self, tenant: Tenant, host: str) -> tuple[str, str]:
        """(namespace inode, udhcpc pid) of a guest: the same pair means it was never remade."""
        guest = self.guest(tenant, host)
        inode = self.lab.run(host, ["stat", "-L", "-c", "%i", f"/run/netns/{guest}"], capture_output=True, text=True,
                             check=True, timeout=30).stdout.strip()
        pids = self.lab.run(host, ["sh", "-c", f"cat {self.cloud.state_dir}/hosts/{host}/compute/*/{guest}.pid"],
                            capture_output=True, text=True, check=True, timeout=30).stdout.strip()
        return inode, pids


@pytest.fixture(scope="module")
def world(session_lab_factory):
    missing = [tool for tool in ("dnsmasq", "busybox", "tcpdump", "bridge", "nsenter", "setsid")
               if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (deploy/bootstrap.sh installs them, as root)")
    lab = session_lab_factory(["ctl", *HOSTS])
    prefix = run_prefix()
    try:
        with kernel_cloud(lab, HOSTS, prefix) as cloud:
            assert cloud.cloud is not None
            cloud.cloud.wait_hypervisors(3)
            yield World(cloud, prefix)
    finally:
        lab.down()


def test_two_tenants_vms_on_three_hosts_get_leases_and_reach_their_own_tenant_only(world: World) -> None:
    alpha, beta = world.tenant("alpha"), world.tenant("beta")
    started = time.monotonic()
    for host in HOSTS:
        world.enable_only(host)
        for tenant in (alpha, beta):
            batch = tenant.api.post("/instances", {"name": tenant.name(host), "flavor": "small", "image": "tiny",
                                                   "networks": ["lan"]})
            assert tenant.api.wait_batch(batch["batch"], 1)["succeeded"] == 1, [
                (j["action"], j["reason"]) for j in tenant.api.jobs(batch["batch"], "failed")]
            [vm] = batch["instances"]
            tenant.vms[host] = tenant.api.get(f"/instances/{vm['id']}")
            assert tenant.vms[host]["hypervisor_id"] == world.hv[host]
            [port] = [p for p in tenant.api.get("/ports")["items"] if p["instance_id"] == vm["id"]]
            assert port["hypervisor_id"] == world.hv[host]
            tenant.ports[host] = port
    for name, hv in world.hv.items():
        world.operator.patch(f"/hypervisors/{hv}", {"enabled": True})
    created = time.monotonic() - started
    # The same addresses in both tenants: their ranges overlap, as tenants' ranges do.
    assert sorted(alpha.ip(h) for h in HOSTS) == sorted(beta.ip(h) for h in HOSTS) == ["10.0.0.2", "10.0.0.3",
                                                                                        "10.0.0.4"]
    # The domain carries the NIC: the port's MAC on the subnet's bridge, the guest's name as its tap.
    domains = world.operator.domains()
    for tenant in world.tenants:
        for host in HOSTS:
            [domain] = [d for d in domains[world.hv[host]] if d["metadata"].get("name") == tenant.name(host)]
            nics = [{k: nic[k] for k in ("bridge", "mac", "target", "mtu")} for nic in domain["nics"]]
            assert nics == [{"bridge": world.bridge(tenant), "mac": tenant.ports[host]["mac"],
                             "target": world.guest(tenant, host), "mtu": tenant.vpc["mtu"]}]
    # Every guest's DHCP client daemon takes its port's address from the local dnsmasq.
    for tenant in world.tenants:
        for host in HOSTS:
            wait_until(lambda: world.address_of(tenant, host) == tenant.ip(host), 30,
                       f"{tenant.name(host)} on {host} to get {tenant.ip(host)} by DHCP")
            link = world.lab.run(host, in_guest(world.guest(tenant, host), "ip", "-o", "link", "show", "eth0"),
                                 capture_output=True, text=True, check=True).stdout
            assert f" mtu {tenant.vpc['mtu']} " in link, link  # from DHCP (option 26)
    leased = time.monotonic() - started - created
    lab = world.lab
    captures, controls = {}, {}
    for tenant in world.tenants:
        other = next(t for t in world.tenants if t is not tenant)
        for host in HOSTS:
            bridge = world.bridge(tenant)
            captures[(tenant.word, host)] = capture(lab, host, bridge, [other.ports[h]["mac"] for h in HOSTS])
            controls[(tenant.word, host)] = capture(lab, host, bridge, [tenant.ports[h]["mac"] for h in HOSTS])
    time.sleep(1)  # tcpdump is listening
    for tenant in world.tenants:
        other = next(t for t in world.tenants if t is not tenant)
        for host in HOSTS:
            guest = world.guest(tenant, host)
            for peer in HOSTS:
                if peer == host:
                    continue
                reaches(lab, host, guest, tenant.ip(peer), tenant.name(peer), tenant.vpc["domain"])
                neigh = lab.run(host, in_guest(guest, "ip", "neigh", "show", tenant.ip(peer)), capture_output=True,
                                text=True).stdout
                assert tenant.ports[peer]["mac"] in neigh, neigh  # its own tenant's VM answered, no other
            assert resolve(lab, host, guest, other.name(host)) == "", "another tenant's name resolved"
    for (word, host), tcpdump in captures.items():
        assert captured(tcpdump) == 0, f"{word}'s bridge on {host} saw the other tenant's frames"
        assert captured(controls[(word, host)]) > 0, f"the capture on {word}'s bridge on {host} saw nothing"
    print(f"6 VMs created through the API {created:.1f} s, their 6 leases {leased:.1f} s after")


def test_a_leaf_killed_comes_back_and_its_vms_guests_are_left_as_they_were(world: World) -> None:
    alpha = world.tenants[0]
    lab = world.lab
    before = {t.word: world.guest_state(t, "h2") for t in world.tenants}
    count = 400  # 8 s at 50 per second, from h1 to h2's VM, across the hosts' tunnel
    pinger = lab.popen("h1", in_guest(world.guest(alpha, "h1"), "busybox", "ping", "-i", "0.02", "-c", str(count),
                                      "-W", "5", alpha.ip("h2")), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True)
    time.sleep(1)
    old = ranks(lab, "h2", "cloudland_agents.leaf")
    assert old
    kill(old)
    back = wait_until(lambda: world.cloud.answering([world.hv["h2"]]), 30, "h2's leaf to come back")
    # The test driver's domains were saved on disk (agents/simdomains.py): the new leaf defines them again.
    def redefined() -> bool:
        names = {d["metadata"].get("name") for d in world.operator.domains().get(world.hv["h2"], [])}
        return {t.name("h2") for t in world.tenants} <= names
    recovered = wait_until(redefined, 60, "h2's VMs defined again")
    out, _ = pinger.communicate(timeout=60)
    assert re.search(rf"{count} packets transmitted, {count} packets received", out), out
    assert {t.word: world.guest_state(t, "h2") for t in world.tenants} == before, "a guest was made again"
    assert set(ranks(lab, "h2", "cloudland_agents.leaf")).isdisjoint(old)
    for tenant in world.tenants:
        assert world.address_of(tenant, "h2") == tenant.ip("h2")
    print(f"leaf back in {back:.1f} s, its VMs defined again {recovered:.1f} s later; {count} of {count} answered")


def test_security_groups_set_through_the_api_reach_the_hosts(world: World) -> None:
    """Issue 12 end to end: a port moved out of the default group is cut off from its tenant's
    VMs; a rule added through the API lets pings in again; its deletion stops new ones."""
    alpha, lab = world.tenants[0], world.lab
    h1_guest, target = world.guest(alpha, "h1"), alpha.ip("h3")
    assert ping(lab, "h1", h1_guest, target)  # both in the default group
    web = alpha.api.post("/security-groups", {"name": "web"})
    alpha.api.patch(f"/ports/{alpha.ports['h3']['id']}", {"security_groups": ["web"]})
    wait_until(lambda: not ping(lab, "h1", h1_guest, target, count=1), 30, "h3's VM to leave the default group")
    rule = alpha.api.post("/security-groups/web/rules", {"protocol": "icmp", "remote_group": "default"})
    wait_until(lambda: ping(lab, "h1", h1_guest, target, count=1), 30, "the icmp rule to reach h3")
    alpha.api.request("DELETE", f"/security-groups/web/rules/{rule['id']}")
    wait_until(lambda: not ping(lab, "h1", h1_guest, target, count=1), 30, "the rule's deletion to reach h3")
    alpha.api.patch(f"/ports/{alpha.ports['h3']['id']}", {"security_groups": []})
    wait_until(lambda: ping(lab, "h1", h1_guest, target, count=1), 30, "h3's VM back in the default group")
    alpha.api.request("DELETE", f"/security-groups/{web['id']}")


def test_a_nic_attached_to_a_running_vm_gets_its_lease_and_a_detached_one_leaves_nothing(world: World) -> None:
    alpha, lab = world.tenants[0], world.lab
    back = alpha.api.post("/subnets", {"name": "back", "vpc": alpha.vpc["id"], "cidr": "10.9.0.0/24"})
    bridge = f"{world.prefix}b{back['vni']}"
    added: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    for host in ("h1", "h3"):
        vm = alpha.vms[host]
        job = alpha.api.post(f"/instances/{vm['id']}/nics", {"network": "back"})
        assert alpha.api.get(f"/jobs/{job['id']}", wait=60)["state"] == "succeeded"
        [added[host]] = [p for p in alpha.api.get("/ports")["items"]
                         if p["subnet_id"] == back["id"] and p["instance_id"] == vm["id"]]
        assert added[host]["device_index"] == 1
    for host, port in added.items():
        wait_until(lambda: world.address_in(host, world.guest_of(port)) == port["fixed_ips"][0], 30,
                   f"the attached NIC on {host} to get its lease")
    attached = time.monotonic() - started
    assert ping(lab, "h1", world.guest_of(added["h1"]), added["h3"]["fixed_ips"][0])
    assert ping(lab, "h1", world.guest(alpha, "h1"), alpha.ip("h3"))  # the primary NIC works on
    assert bridge not in kernel_objects(lab, "h2", world.prefix)["links"]  # h2 has no VM on it
    for host, port in added.items():
        reply = alpha.api.request("DELETE", f"/instances/{alpha.vms[host]['id']}/nics/{port['id']}")
        assert alpha.api.get(f"/jobs/{reply['id']}", wait=60)["state"] == "succeeded"
    for host, port in added.items():
        wait_until(lambda: not {world.guest_of(port), bridge} & set(kernel_objects(lab, host, world.prefix)["links"]),
                   30, f"the detached NIC's guest and bridge gone from {host}")
        assert world.address_of(alpha, host) == alpha.ip(host)  # the primary's guest untouched
    kept = {p["id"]: p for p in alpha.api.get("/ports")["items"]}
    assert all(kept[p["id"]]["instance_id"] is None for p in added.values())  # kept, bound to nothing
    for port in added.values():
        alpha.api.request("DELETE", f"/ports/{port['id']}")
    alpha.api.request("DELETE", f"/subnets/{back['id']}")
    print(f"two NICs attached to running VMs, leases in {attached:.1f} s")


def test_deleting_the_vms_and_networks_through_the_api_leaves_nothing_on_any_host(world: World) -> None:
    for tenant in world.tenants:
        batch = tenant.api.post("/instances/actions", {"action": "delete",
                                                       "ids": [vm["id"] for vm in tenant.vms.values()]})
        assert tenant.api.wait_batch(batch["batch"], len(HOSTS))["succeeded"] == len(HOSTS)
        assert tenant.api.get("/ports")["items"] == []
        tenant.api.request("DELETE", f"/subnets/{tenant.subnet['id']}")
        tenant.api.request("DELETE", f"/vpcs/{tenant.vpc['id']}")
    empty = {"links": [], "netns": [], "fdb": [], "neighbours": [], "dnsmasq": []}
    for host in HOSTS:
        wait_until(lambda: kernel_objects(world.lab, host, world.prefix) == empty, 30,
                   f"nothing of ours left on {host}")
    udhcpc = [pid for host in HOSTS for pid in world.lab.pids(host) if b"udhcpc" in _cmdline(pid)]
    assert udhcpc == [], "a guest's DHCP client outlived its VM"


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return file.read()
    except OSError:
        return b""

