"""A simulated hypervisor's own namespace (agents/network/hostns.py) and ``cloudland down``,
which removes what a killed all-in-one cloud left (cloudland/netclean.py): real namespaces, veths
and a bridge of this machine, under a prefix of the test's own."""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from cloudland.netclean import NETNS_DIR, remove_run, run_links, run_namespaces
from cloudland_agents.network.fake import simulated_vtep
from cloudland_agents.network.hostns import PROVIDER_INSIDE, UNDERLAY_INSIDE, HostNamespace
from tests.integration.test_make_run_routers import addresses_in, external_network
from cloudland_cli.hostnet import PREFIX_FILE, why_not

REASON = why_not()
pytestmark = pytest.mark.skipif(bool(REASON), reason=f"needs namespaces of this machine: {REASON}")
BIN = Path(sys.executable).parent


@pytest.fixture
def prefix() -> Iterator[str]:
    name = "t" + secrets.token_hex(2)
    yield name
    remove_run(name)


def made(prefix: str, hypervisor: int) -> HostNamespace:
    host = HostNamespace(hypervisor, prefix, simulated_vtep(hypervisor))
    host.ensure_namespace()
    with IPRoute(netns=host.name, flags=0) as inside:
        host.ensure_underlay(inside)
    return host


def test_two_hypervisors_namespaces_reach_each_other_and_ensure_is_level_triggered(prefix: str) -> None:
    one, two = made(prefix, 1), made(prefix, 2)
    ping = subprocess.run(["nsenter", f"--net={NETNS_DIR / one.name}", "--", "busybox", "ping", "-c", "1", "-W", "2",
                           simulated_vtep(2)], capture_output=True, text=True)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    # Made again: nothing to do. A cut cable (the inside end down) is made right, nothing else.
    with IPRoute(netns=one.name, flags=0) as inside:
        assert one.ensure_namespace() == 0 and one.ensure_underlay(inside) == 0
        inside.link("set", index=inside.link_lookup(ifname=UNDERLAY_INSIDE)[0], state="down")
        assert one.ensure_underlay(inside) == 1
    one.close()
    two.close()
    assert run_namespaces(prefix) == [f"{prefix}hv1", f"{prefix}hv2"]
    assert run_links(prefix) == [f"{prefix}u1", f"{prefix}u2", f"{prefix}u"]


def test_the_machines_provider_bridge_reaches_into_a_hypervisors_namespace(prefix: str) -> None:
    """``cloudland up``'s external network (cli/hostnet.py): the machine's ``<prefix>e`` is extended
    into each hypervisor's namespace as a bridge of the same name, only while the machine has one."""
    host = made(prefix, 4)
    bridge, network = f"{prefix}e", external_network()
    machine, inside_address = f"{network.network_address + 1}", f"{network.network_address + 9}"
    with IPRoute(netns=host.name, flags=0) as inside:
        assert host.ensure_provider(inside) == 0 and not inside.link_lookup(ifname=bridge)  # no bridge, nothing
        for step in (["link", "add", bridge, "type", "bridge"], ["link", "set", bridge, "up"],
                     ["addr", "add", f"{machine}/{network.prefixlen}", "dev", bridge]):
            subprocess.run(["ip", *step], check=True)
        assert host.ensure_provider(inside) == 5  # the veth, on the bridge; the bridge inside, up; e0 on it, up
        index = inside.link_lookup(ifname=bridge)[0]
        inside.addr("add", index=index, address=inside_address, prefixlen=network.prefixlen)
        ping = subprocess.run(["nsenter", f"--net={NETNS_DIR / host.name}", "--", "busybox", "ping", "-c", "1", "-W",
                               "2", machine], capture_output=True, text=True)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        assert host.ensure_provider(inside) == 0
        inside.link("set", index=inside.link_lookup(ifname=PROVIDER_INSIDE)[0], state="down")
        assert host.ensure_provider(inside) == 1
    host.close()
    assert run_links(prefix) == [f"{prefix}e4", f"{prefix}u4", bridge, f"{prefix}u"]
    remove_run(prefix)
    assert run_links(prefix) == [] and addresses_in(network) == []


def test_down_removes_what_a_killed_cloud_left_and_refuses_while_it_runs(prefix: str, tmp_path: Path) -> None:
    made(prefix, 3).close()
    beside = f"{prefix}hv3.{prefix}d5"  # a DHCP server's namespace, with its daemon in it
    subprocess.run(["ip", "netns", "add", beside], check=True)
    daemon = subprocess.Popen(["nsenter", f"--net={NETNS_DIR / beside}", "--", "sleep", "300"])
    other = f"{prefix}x"  # not of the run's shapes: left alone
    subprocess.run(["ip", "netns", "add", other], check=True)
    try:
        (tmp_path / PREFIX_FILE).write_text(prefix + "\n")
        root = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "cloudland_launcher"])
        (tmp_path / "root.pid").write_text(f"{root.pid}\n")
        try:
            refused = subprocess.run([str(BIN / "cloudland"), "down", "--state-dir", str(tmp_path)],
                                     capture_output=True, text=True)
            assert refused.returncode == 2 and "still runs (root)" in refused.stderr, refused.stderr
        finally:
            root.kill()
            root.wait()
        done = subprocess.run([str(BIN / "cloudland"), "down", "--state-dir", str(tmp_path)],
                              capture_output=True, text=True)
        assert done.returncode == 0 and f"of {prefix}*" in done.stdout, done.stderr
        deadline = time.monotonic() + 10
        while daemon.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert daemon.poll() is not None
        assert run_namespaces(prefix) == [] and run_links(prefix) == []
        assert (NETNS_DIR / other).exists()
        again = subprocess.run([str(BIN / "cloudland"), "down", "--state-dir", str(tmp_path)],
                               capture_output=True, text=True)
        assert again.returncode == 0 and "nothing" in again.stdout
    finally:
        if daemon.poll() is None:
            daemon.kill()
        daemon.wait()
        subprocess.run(["ip", "netns", "delete", other], capture_output=True)
        if (NETNS_DIR / beside).exists():
            subprocess.run(["ip", "netns", "delete", beside], capture_output=True)
