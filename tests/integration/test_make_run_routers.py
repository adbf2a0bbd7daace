"""``make run`` with a router (issues 11 and 12): on ``cloudland up``'s per-hypervisor namespaces
(agents/network/hostns.py), a router joins two subnets of a VPC and VMs on two simulated
hypervisors ping across them, each through its own hypervisor's copy of the router (distributed
routing: the router namespace is ``<prefix>hv<id>.<prefix>r<vpc>``); a subnet taken off the
router stops answering; nothing of the run is left after the stop.

``make run`` has no external network (no uplink to a provider segment on this machine), so
floating IPs are not exercised here: tests/network/test_router_vms.py does, on a lab."""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

import pytest

from cloudland.netclean import run_links, run_namespaces
from cloudland_launcher.harness import wait_for
from tests.integration.test_make_run_network import REASON, _run
from tests.upcloud import UpCloud, start_up, stop_up

pytestmark = pytest.mark.skipif(bool(REASON), reason=f"needs namespaces of this machine: {REASON}")


def _ok(cloud: UpCloud, *args: str) -> str:
    done = _run(cloud, *args)
    assert done.returncode == 0, f"cloudland {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


def _pings(cloud: UpCloud, vm: str, address: str, count: int = 3) -> subprocess.CompletedProcess[str]:
    return _run(cloud, "vm", "exec", vm, "--", "busybox", "ping", "-c", str(count), "-W", "2", address)


def test_a_router_of_make_run_joins_two_subnets_across_simulated_hypervisors(tmp_path: Path) -> None:
    prefix = "t" + secrets.token_hex(2)
    cloud = start_up(tmp_path, 4, 2, CLOUDLAND_NETWORK_PREFIX=prefix)
    try:
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
    finally:
        stop_up(cloud)
    leftovers = run_namespaces(prefix) + run_links(prefix)
    assert leftovers == [], (leftovers, cloud.output())
