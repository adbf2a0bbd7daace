"""Issue 12, must-show 6: a QEMU guest behind a router on the real libvirtd (``qemu:///system``)
reaches the "internet" by SNAT and answers through a floating IP.

The kernel's data plane (agents/network/, a prefix of this run) makes the subnet and the VPC's
router on this machine from a ``net.sync``: the router's namespace, its gateway on the subnet's
bridge, and its external interface on a provider bridge of this test's, on which a namespace
plays the internet (203.0.113.1). The guest's DHCP client takes its lease (router 10.0.0.1) and
pings the internet from its console; a capture there sees the router's SNAT address as source.
With a floating IP the internet pings the guest. Everything is removed afterwards (an empty full
sync removes the router's namespace too), then the provider bridge and the internet.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from cloudland_agents.compute import nics
from cloudland_agents.compute import ops as _compute_ops  # noqa: F401 - registers vm.*
from cloudland_agents.hypervisor import Hypervisor
from cloudland_agents.network.ops import Network
from cloudland_proto.v1 import compute_pb2 as cpb
from cloudland_proto.v1 import network_pb2 as npb

pytest.register_assert_rewrite("tests.realvm.qemu_host")  # before the import: it is a plugin too
from tests.realvm.qemu_host import QemuHost, console_echo, guest_mac  # noqa: E402
from tests.realvm.test_vpc import plane  # noqa: E402, F401 - the fixture: this machine's kernel data plane

pytest_plugins = ["tests.realvm.qemu_host"]
pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.realvm]

VNI = 4343
NAME = "behind-router"
IP, SNAT, FLOATING, INTERNET = "10.0.0.11", "203.0.113.10", "203.0.113.20", "203.0.113.1"
LEASE = re.compile(r"cloudland-guest: lease ip=([0-9.]+)/24 mtu=(\d+) router=([0-9.]*)")


def sh(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, shell=True, capture_output=True, text=True, timeout=60)


@pytest.fixture
def internet(plane: tuple[Hypervisor, Network]) -> Iterator[tuple[str, str]]:
    """(provider bridge, internet namespace): the external segment on this machine, both named
    with the run's prefix plus a suffix its data plane never reads as its own."""
    prefix = plane[1].names.prefix
    bridge, namespace = f"{prefix}prov", f"{prefix}inet"
    try:
        for command in (f"ip link add {bridge} type bridge", f"ip link set {bridge} up", f"ip netns add {namespace}",
                        f"ip link add {prefix}in0 type veth peer name eth1 netns {namespace}",
                        f"ip link set {prefix}in0 master {bridge} up",
                        f"ip -n {namespace} addr add {INTERNET}/24 dev eth1", f"ip -n {namespace} link set eth1 up",
                        f"ip -n {namespace} link set lo up"):
            done = sh(command)
            assert done.returncode == 0, (command, done.stderr)
        yield bridge, namespace
    finally:
        sh(f"ip netns del {namespace}")
        sh(f"ip link del {bridge}")


def vpc(plane: tuple[Hypervisor, Network], bridge: str, floating: bool, generation: int) -> npb.NetVpcState:
    subnet = npb.NetSubnet(id=1, vpc_id=1, vni=VNI, cidr="10.0.0.0/24", gateway="10.0.0.1", dhcp=True)
    port = npb.NetPort(id=1, subnet_id=1, mac=guest_mac(NAME), ips=[IP], hostname=NAME, hypervisor=plane[0].id,
                       vtep="127.0.0.1")
    router = npb.NetRouter(id=1, subnet_ids=[1], snat_address=SNAT,
                           external=npb.NetExternal(id=1, cidr="203.0.113.0/24", gateway=INTERNET, bridge=bridge))
    if floating:
        router.floating_ips.append(npb.NetFloatingIp(id=1, address=FLOATING, port_id=1, fixed_ip=IP))
    return npb.NetVpcState(vpc_id=1, generation=generation, mtu=1450, domain="vpc.test", subnets=[subnet],
                           ports=[port], router=router)


def test_a_qemu_guest_reaches_the_internet_by_snat_and_answers_on_a_floating_ip(
        qemu_host: QemuHost, plane: tuple[Hypervisor, Network], internet: tuple[str, str]) -> None:
    hv, network = plane
    bridge, namespace = internet
    assert network.sync(npb.NetSyncRequest(vpcs=[vpc(plane, bridge, False, 1)])).added > 0
    started = time.monotonic()
    nic = cpb.Nic(mac=guest_mac(NAME), vni=VNI, mtu=1450, ips=[f"{IP}/24"], gateway="10.0.0.1")
    qemu_host.compute.create(replace(qemu_host.spec(NAME), nics=nics.resolve(hv, [nic]).nics))
    qemu_host.wait_boots(NAME, 1)
    deadline = time.monotonic() + 120
    while not (lease := LEASE.search(qemu_host.console(NAME))):
        assert time.monotonic() < deadline, f"no lease:\n{qemu_host.console(NAME)[-2000:]}"
        time.sleep(0.2)
    assert lease.groups() == (IP, "1450", "10.0.0.1")
    leased = time.monotonic() - started
    dump = subprocess.Popen(["ip", "netns", "exec", namespace, "tcpdump", "-i", "eth1", "-n", "-l",
                             "icmp[icmptype] == icmp-echo"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    dom = qemu_host.session.conn.lookupByName(NAME)
    echoed = console_echo(dom, f"ping -c 3 -W 5 {INTERNET}".encode(), b"packets received", timeout=60)
    time.sleep(0.3)
    dump.send_signal(2)
    seen, _ = dump.communicate(timeout=10)
    assert re.search(rb"3 packets transmitted, [1-3] packets received", echoed), echoed[-1500:]
    assert set(re.findall(r"IP (\d+\.\d+\.\d+\.\d+) > ", seen)) == {SNAT}, seen
    assert sh(f"ip netns exec {namespace} busybox ping -c 1 -W 1 {FLOATING}").returncode == 1
    network.sync(npb.NetSyncRequest(vpcs=[vpc(plane, bridge, True, 2)]))
    answered = sh(f"ip netns exec {namespace} busybox ping -c 3 -i 0.2 -W 2 {FLOATING}")
    assert answered.returncode == 0, answered.stdout + answered.stderr
    print(f"a QEMU guest behind a router: lease {leased:.1f} s; SNAT as {SNAT}; answered on {FLOATING}")
