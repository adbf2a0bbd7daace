"""``make run``'s default network really pings (issue 11): ``cloudland up`` as root gives each
simulated hypervisor with a VM on a network a namespace of its own (agents/network/hostns.py),
VMs on two hypervisors ping each other over VXLAN (``cloudland vm exec``), and a stop of ``up``
leaves no namespace, link or dnsmasq of the run behind; a restart on the same state makes them again."""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path

import pytest

from cloudland.netclean import run_links, run_namespaces
from cloudland_cli.hostnet import why_not
from cloudland_launcher.harness import wait_for
from tests.upcloud import UpCloud, start_up, stop_up

REASON = why_not()
pytestmark = pytest.mark.skipif(bool(REASON), reason=f"needs namespaces of this machine: {REASON}")


def _run(cloud: UpCloud, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = cloud.cli(*args)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _leftovers(prefix: str) -> list[str]:
    processes = subprocess.run(["pgrep", "-af", f"/{prefix}hv"], capture_output=True, text=True).stdout.split("\n")
    return run_namespaces(prefix) + run_links(prefix) + [p for p in processes if p.strip()]


def _up(base: Path, prefix: str, seed: bool = True) -> UpCloud:
    return start_up(base, 4, 2, seed=seed, CLOUDLAND_NETWORK_PREFIX=prefix, CLOUDLAND_API_DEFAULT_NETWORK="10.0.0.0/16")


def _pings(cloud: UpCloud, vm: str, address: str) -> subprocess.CompletedProcess[str]:
    return _run(cloud, "vm", "exec", vm, "--", "busybox", "ping", "-c", "3", "-W", "2", address)


def test_vms_of_make_run_ping_across_simulated_hypervisors(tmp_path: Path) -> None:
    prefix = "t" + secrets.token_hex(2)
    cloud = _up(tmp_path, prefix)
    try:
        assert f"namespace {prefix}hv<id>" in cloud.output(), cloud.output()
        made = _run(cloud, "vm", "create", "web", "--flavor", "small", "--image", "tiny", "--count", "4")
        assert made.returncode == 0, made.stderr
        vms = {vm["name"]: vm for vm in cloud.instances()}
        ports = {p["instance_id"]: p for p in cloud.get("/ports", limit=100)["items"]}
        by_host: dict[int, str] = {}
        for name, vm in sorted(vms.items()):
            by_host.setdefault(vm["hypervisor_id"], name)
        assert len(by_host) >= 2, f"the 4 VMs sit on one hypervisor: {vms}"
        (hv_a, a), (hv_b, b) = sorted(by_host.items())[:2]
        ip_b = ports[vms[b]["id"]]["fixed_ips"][0]
        ip_a = ports[vms[a]["id"]]["fixed_ips"][0]
        assert {f"{prefix}hv{hv_a}", f"{prefix}hv{hv_b}"} <= set(run_namespaces(prefix))
        # Each guest runs udhcpc: its address is its lease from its hypervisor's dnsmasq.
        for vm, ip in ((a, ip_a), (b, ip_b)):
            wait_for(lambda vm=vm, ip=ip: f"inet {ip}/16" in _run(cloud, "vm", "exec", vm, "--", "ip", "-4", "addr",
                                                               "show", "eth0").stdout, 30, f"{vm}'s lease {ip}")
        pinged = _pings(cloud, a, ip_b)
        assert pinged.returncode == 0 and "3 packets received" in pinged.stdout, pinged.stdout + pinged.stderr
        assert _pings(cloud, b, ip_a).returncode == 0
        # Nobody else's address answers: the ping really crosses the tunnel and can fail.
        assert _pings(cloud, a, "10.0.255.250").returncode != 0
        # A VM that is not there is a clear refusal, not a command run somewhere.
        denied = _run(cloud, "vm", "exec", "nosuchvm", "--", "true")
        assert denied.returncode == 2 and "no VM named 'nosuchvm'" in denied.stderr, denied.stderr
    finally:
        stop_up(cloud)
    assert "removed" in cloud.output() and _leftovers(prefix) == [], cloud.output()
    # The same state started again: the hypervisors' held state makes everything again.
    cloud = _up(tmp_path, prefix, seed=False)
    try:
        vms = {vm["name"]: vm for vm in cloud.instances()}
        ports = {p["instance_id"]: p for p in cloud.get("/ports", limit=100)["items"]}
        wait_for(lambda: _pings(cloud, a, ports[vms[b]["id"]]["fixed_ips"][0]).returncode == 0, 60,
                 f"{a} pings {b} after a restart")
        assert json.loads(_run(cloud, "vm", "list", "--json").stdout)["items"]
    finally:
        stop_up(cloud)
    assert _leftovers(prefix) == []
