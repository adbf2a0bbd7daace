"""Issue 11, must-show 4: two QEMU guests on one VPC, on the real libvirtd (``qemu:///system``).

The kernel's data plane (agents/network/, a prefix of this run) makes the subnet's bridge, VXLAN
device and dnsmasq on this machine from a ``net.sync``; ``vm.create`` puts each guest's NIC on
that bridge by its VNI (a tap named by its MAC, the VPC's MTU). Each guest's DHCP client (the
test guest's init, deploy/guest/init) prints the lease dnsmasq gave it on its serial console, and
one guest pings the other from its console shell. Everything is removed afterwards: the VMs, and
by an empty full sync the bridge, VXLAN device, DHCP namespace and dnsmasq.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from cloudland_agents.compute import nics
from cloudland_agents.compute import ops as _compute_ops  # noqa: F401 - registers vm.*
from cloudland_agents.compute.domain import Nic
from cloudland_agents.hypervisor import Hypervisor
from cloudland_agents.network.names import Names
from cloudland_agents.network.ops import Network, network_for
from cloudland_proto.v1 import compute_pb2 as cpb
from cloudland_proto.v1 import network_pb2 as npb

pytest.register_assert_rewrite("tests.realvm.qemu_host")  # before the import: it is a plugin too
from tests.realvm.qemu_host import QemuHost, console_echo, guest_mac  # noqa: E402

pytest_plugins = ["tests.realvm.qemu_host"]
pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.realvm]

HV = 11
VNI = 4242
NAMES = ("vpc-a", "vpc-b")
LEASE = re.compile(r"cloudland-guest: lease ip=([0-9.]+)/24 mtu=(\d+) router=([0-9.]*)")


@pytest.fixture
def plane(qemu_host: QemuHost, tmp_path: Path) -> Iterator[tuple[Hypervisor, Network]]:
    """This machine (as hypervisor HV) and its kernel data plane under a prefix of this run,
    emptied afterwards."""
    hv = Hypervisor(HV, "qemu:///system", "this-host", tmp_path, vtep="127.0.0.1")
    network = Network(hv, Names(f"q{os.getpid() % 100000}"))
    network_for.set(hv, network)
    try:
        yield hv, network
    finally:
        network.sync(npb.NetSyncRequest(full=True))  # removes every object of the prefix
        network.close()
        hv.close()


def test_two_qemu_guests_on_one_vpc_get_leases_from_dnsmasq_and_ping_each_other(
        qemu_host: QemuHost, plane: tuple[Hypervisor, Network]) -> None:
    hv, network = plane
    macs = {name: guest_mac(name) for name in NAMES}
    ips = {name: f"10.0.0.{10 + n}" for n, name in enumerate(NAMES, 1)}
    subnet = npb.NetSubnet(id=1, vpc_id=1, vni=VNI, cidr="10.0.0.0/24", gateway="10.0.0.1", dhcp=True)
    ports = [npb.NetPort(id=n, subnet_id=1, mac=macs[name], ips=[ips[name]], hostname=name, hypervisor=HV,
                         vtep="127.0.0.1") for n, name in enumerate(NAMES, 1)]
    synced = network.sync(npb.NetSyncRequest(vpcs=[npb.NetVpcState(
        vpc_id=1, generation=1, mtu=1450, domain="vpc.test", subnets=[subnet], ports=ports)]))
    assert synced.added > 0
    started = time.monotonic()
    for name in NAMES:
        spec = qemu_host.spec(name)
        nic = cpb.Nic(mac=macs[name], vni=VNI, mtu=1450, ips=[f"{ips[name]}/24"], gateway="10.0.0.1")
        resolved = nics.resolve(hv, [nic])
        assert resolved.nics == (Nic(network.names.bridge(VNI), macs[name], network.names.tap(macs[name]), 1450),)
        # The spec the agent would build: the qemu host's guest (kernel, drive, console) with this NIC.
        qemu_host.compute.create(replace(spec, nics=resolved.nics))
    for name in NAMES:
        qemu_host.wait_boots(name, 1)
    leases = {}
    for name in NAMES:
        deadline = time.monotonic() + 120
        while not (found := LEASE.search(qemu_host.console(name))):
            assert time.monotonic() < deadline, f"{name} got no lease:\n{qemu_host.console(name)[-2000:]}"
            time.sleep(0.2)
        leases[name] = found.groups()
    leased = time.monotonic() - started
    assert leases == {name: (ips[name], "1450", "10.0.0.1") for name in NAMES}
    # The tap is on the bridge, named by the MAC.
    tap = network.names.tap(macs[NAMES[0]])
    assert Path(f"/sys/class/net/{tap}/master").resolve().name == network.names.bridge(VNI)
    dom = qemu_host.session.conn.lookupByName(NAMES[0])
    echoed = console_echo(dom, f"ping -c 3 -W 5 {ips[NAMES[1]]}".encode(), b"packets received", timeout=60)
    assert re.search(rb"3 packets transmitted, [1-3] packets received", echoed), echoed[-1500:]
    print(f"two QEMU guests booted and leased in {leased:.1f} s; {echoed.decode(errors='replace').splitlines()[-2:]}")

