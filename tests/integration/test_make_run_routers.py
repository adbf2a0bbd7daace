"""``make run`` with a router (issues 11 and 12): on ``cloudland up``'s per-hypervisor namespaces
(agents/network/hostns.py), a router joins two subnets of a VPC and VMs on two simulated
hypervisors ping across them, each through its own hypervisor's copy of the router (distributed
routing: the router namespace is ``<prefix>hv<id>.<prefix>r<vpc>``); a subnet taken off the
router stops answering; nothing of the run is left after the stop.

``up`` also makes its external network on this machine (cli/hostnet.py ``external``): the bridge
``<prefix>e`` with the network's first address, which each hypervisor's namespace joins, and the
API's external network ``external`` with the default network's router's gateway there. A VM's
floating IP answers pings from this machine's own namespace once its security group lets ICMP in,
and not after it is disassociated.

One cloud for the module (CI's time): each test uses the ``make_run`` fixture, and the last one
stops it and checks that nothing of it is left on the machine (namespaces, links, the external
network's address, nftables rules naming its bridge or address)."""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from cloudland.netclean import run_links, run_namespaces
from cloudland_launcher.harness import wait_for
from tests.integration.test_make_run_network import REASON, _run
from tests.upcloud import UpCloud, start_up, stop_up

pytestmark = pytest.mark.skipif(bool(REASON), reason=f"needs namespaces of this machine: {REASON}")


def external_network() -> ipaddress.IPv4Network:
    """The cloud's external network: the network after this session's lab subnet
    (``CLOUDLAND_TEST_LAB_SUBNET``, tests/labfixtures.py), so two sessions' never meet on the machine
    (and never the machine's own, as ``make run``'s default could)."""
    lab = ipaddress.IPv4Network(os.environ.get("CLOUDLAND_TEST_LAB_SUBNET") or "10.77.0.0/24")
    return ipaddress.IPv4Network((int(lab.network_address) + lab.num_addresses, max(lab.prefixlen, 24)))


def addresses_in(network: ipaddress.IPv4Network) -> list[str]:
    """The machine's addresses in ``network``, with their links."""
    listed = json.loads(subprocess.run(["ip", "-j", "-4", "addr", "show"], capture_output=True, text=True,
                                       check=True).stdout)
    return [f"{a['local']} on {link['ifname']}" for link in listed for a in link.get("addr_info", [])
            if ipaddress.IPv4Address(a["local"]) in network]


@dataclass
class MakeRun:
    """The module's cloud, as ``make run`` starts it (a default and an external network)."""

    cloud: UpCloud
    prefix: str
    external: ipaddress.IPv4Network
    stopped: bool = False

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            stop_up(self.cloud)


@pytest.fixture(scope="module")
def make_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MakeRun]:
    prefix = "t" + secrets.token_hex(2)
    external = external_network()
    assert addresses_in(external) == [], f"{external} is in use on this machine: {addresses_in(external)}"
    cloud = start_up(tmp_path_factory.mktemp("make-run"), 4, 2, CLOUDLAND_NETWORK_PREFIX=prefix,
                     CLOUDLAND_API_DEFAULT_NETWORK="10.0.0.0/16", CLOUDLAND_API_EXTERNAL_NETWORK=str(external))
    run = MakeRun(cloud, prefix, external)
    try:
        yield run
    finally:
        run.stop()


def _ok(cloud: UpCloud, *args: str) -> str:
    done = _run(cloud, *args)
    assert done.returncode == 0, f"cloudland {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


def _pings(cloud: UpCloud, vm: str, address: str, count: int = 3) -> subprocess.CompletedProcess[str]:
    return _run(cloud, "vm", "exec", vm, "--", "busybox", "ping", "-c", str(count), "-W", "2", address)


def test_a_router_of_make_run_joins_two_subnets_across_simulated_hypervisors(make_run: MakeRun) -> None:
    cloud, prefix = make_run.cloud, make_run.prefix
    _ok(cloud, "vpc", "create", "rv")
    _ok(cloud, "subnet", "create", "ra", "--vpc", "rv", "--cidr", "10.31.1.0/24")
    _ok(cloud, "subnet", "create", "rb", "--vpc", "rv", "--cidr", "10.31.2.0/24")
    _ok(cloud, "router", "create", "r", "--vpc", "rv")
    _ok(cloud, "router", "add-subnet", "r", "ra")
    _ok(cloud, "router", "add-subnet", "r", "rb")
    _ok(cloud, "vm", "create", "a", "--flavor", "small", "--image", "tiny", "--network", "ra", "--count", "2")
    _ok(cloud, "vm", "create", "b", "--flavor", "small", "--image", "tiny", "--network", "rb", "--count", "2")
    vms = {vm["name"]: vm for vm in cloud.instances()}
    ports = {p["instance_id"]: p["fixed_ips"][0] for p in cloud.get("/ports", limit=100)["items"]}
    pairs = [(a, b) for a in ("a-1", "a-2") for b in ("b-1", "b-2")
             if vms[a]["hypervisor_id"] != vms[b]["hypervisor_id"]]
    assert pairs, f"every VM on one hypervisor: {[(n, v['hypervisor_id']) for n, v in vms.items()]}"
    a, b = pairs[0]
    hv_a, hv_b = vms[a]["hypervisor_id"], vms[b]["hypervisor_id"]
    ip_a, ip_b = ports[vms[a]["id"]], ports[vms[b]["id"]]
    assert ip_a.startswith("10.31.1.") and ip_b.startswith("10.31.2."), (ip_a, ip_b)
    vpc = cloud.get("/vpcs", limit=100)["items"]
    vpc_id = next(v["id"] for v in vpc if v["name"] == "rv")
    # Each hypervisor runs the VPC's router beside its own VMs (scoped to its namespace).
    wait_for(lambda: {f"{prefix}hv{hv_a}.{prefix}r{vpc_id}", f"{prefix}hv{hv_b}.{prefix}r{vpc_id}"}
             <= set(run_namespaces(prefix)), 60, "the router's namespace on both hypervisors")
    for vm, ip in ((a, ip_a), (b, ip_b)):
        wait_for(lambda vm=vm, ip=ip: f"inet {ip}/24" in _run(cloud, "vm", "exec", vm, "--", "ip", "-4", "addr",
                                                           "show", "eth0").stdout, 60, f"{vm}'s lease {ip}")
    # Across subnets and hypervisors, both ways, and each guest's gateway answers locally.
    wait_for(lambda: _pings(cloud, a, ip_b, 1).returncode == 0, 30, f"{a} ({ip_a}, hv {hv_a}) pings {b} ({ip_b})")
    pinged = _pings(cloud, a, ip_b)
    assert "3 packets received" in pinged.stdout, pinged.stdout + pinged.stderr
    assert _pings(cloud, b, ip_a).returncode == 0
    assert _pings(cloud, a, "10.31.1.1").returncode == 0 and _pings(cloud, b, "10.31.2.1").returncode == 0
    # Nobody else's address answers: the route really carries the ping, and can fail.
    assert _pings(cloud, a, "10.31.2.250", 1).returncode != 0
    # Off the router, subnet rb is unreachable from ra (its VMs still reach each other).
    _ok(cloud, "router", "remove-subnet", "r", "rb")
    wait_for(lambda: _pings(cloud, a, ip_b, 1).returncode != 0, 30, f"{a} no longer reaches {b}")


def _machine_pings(address: str) -> bool:
    """One ping from this machine's own namespace (where the test runs), answered within 1 s."""
    return subprocess.run(["busybox", "ping", "-c", "1", "-W", "1", address], capture_output=True).returncode == 0


def _in_router(namespace: str, *command: str) -> str:
    return subprocess.run(["ip", "netns", "exec", namespace, *command], capture_output=True, text=True).stdout


def test_a_floating_ip_of_make_run_answers_this_machine(make_run: MakeRun) -> None:
    cloud, prefix, external = make_run.cloud, make_run.prefix, make_run.external
    machine, bridge = str(external.network_address + 1), f"{prefix}e"
    # up made the external network on the machine, and the API the default network's router on it.
    assert f"external network 'external' {external}: this machine is {machine}" in cloud.output(), cloud.output()
    assert addresses_in(external) == [f"{machine} on {bridge}"]
    externals = cloud.get("/external-networks", limit=100)["items"]
    assert [(e["name"], e["cidr"], e["bridge"], e["gateway"]) for e in externals] == \
        [("external", str(external), bridge, machine)]
    router = next(r for r in cloud.get("/routers", limit=100)["items"] if r["name"] == "default")
    assert router["external_network_id"] == externals[0]["id"] and len(router["subnet_ids"]) == 1
    _ok(cloud, "vm", "create", "pub", "--flavor", "small", "--image", "tiny")  # on the default network
    vm = next(v for v in cloud.instances() if v["name"] == "pub")
    (port,) = cloud.get("/ports", limit=100, instance=vm["id"])["items"]
    fixed = port["fixed_ips"][0]
    wait_for(lambda: f"inet {fixed}/16" in _run(cloud, "vm", "exec", "pub", "--", "ip", "-4", "addr", "show",
                                                 "eth0").stdout, 60, f"pub's lease {fixed}")
    # Out by SNAT: pub reaches the machine, which answers its hypervisor's SNAT address of the router.
    wait_for(lambda: _pings(cloud, "pub", machine, 1).returncode == 0, 60, f"pub ({fixed}) pings the machine {machine}")
    snat = {s["hypervisor_id"]: s["address"] for s in cloud.get(f"/routers/{router['id']}")["snat_addresses"]}
    neighbours = subprocess.run(["ip", "-4", "neigh", "show", "dev", bridge], capture_output=True, text=True).stdout
    assert snat[vm["hypervisor_id"]] in neighbours and fixed not in neighbours, (snat, neighbours)
    # The banner's floating-IP command: allocated and associated to pub's primary NIC at once.
    fip = json.loads(_ok(cloud, "floating-ip", "create", "--external", "external", "--vm", "pub", "--json"))
    address = fip["address"]
    assert (fip["port_id"], fip["fixed_ip"]) == (port["id"], fixed) and ipaddress.IPv4Address(address) in external
    namespace = f"{prefix}hv{vm['hypervisor_id']}.{prefix}r{router['vpc_id']}"
    wait_for(lambda: f"inet {address}/32" in _in_router(namespace, "ip", "-4", "addr", "show", "x0")
             and f"dnat to {fixed}" in _in_router(namespace, "nft", "list", "table", "ip", "router"), 60,
             f"{address} on pub's router ({namespace}), DNATed to {fixed}")
    # Its security group applies: the default one lets in only its own members, not this machine ...
    assert not any(_machine_pings(address) for _ in range(3)), f"{address} answered through the default group"
    # ... until a rule lets ICMP in from anywhere (the banner's next command).
    _ok(cloud, "secgroup", "rule", "add", "default", "--protocol", "icmp", "--remote-cidr", "0.0.0.0/0")
    wait_for(lambda: _machine_pings(address), 60, f"{address} (pub's floating IP) answers the machine")
    assert all(_machine_pings(address) for _ in range(3))
    # Disassociated, it stops answering, and stays silent.
    _ok(cloud, "floating-ip", "disassociate", address)
    wait_for(lambda: not _machine_pings(address), 30, f"{address} no longer answers once disassociated")
    assert not any(_machine_pings(address) for _ in range(3)), f"{address} answered after its disassociation"


def test_stopping_make_run_leaves_nothing_on_the_machine(make_run: MakeRun) -> None:
    """Last in the module: it stops the module's cloud."""
    make_run.stop()
    prefix = make_run.prefix
    assert "removed" in make_run.cloud.output(), make_run.cloud.output()
    assert run_namespaces(prefix) + run_links(prefix) == []
    assert addresses_in(make_run.external) == []
    ruleset = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, check=True).stdout
    machine = str(make_run.external.network_address + 1)
    assert f"{prefix}e" not in ruleset and machine not in ruleset, ruleset
