"""Helpers of the data-plane tests: agent processes in lab hosts, two tenants' VPC states, guests,
and what the kernel of a host holds, read with the system's own tools (not the agent's code)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cloudland_lab import Lab
from cloudland_proto.v1 import network_pb2 as npb
from google.protobuf.json_format import MessageToDict
from tests.multihost.cluster import LabCloud

REPO = Path(__file__).resolve().parents[2]
STATE_BASE = Path("/var/tmp")  # not /tmp: each lab host has its own
CIDR = "10.0.0.0/24"
DHCP_ADDRESS = "10.0.0.254"


class AgentProc:
    """``tests/network/netagent.py`` running inside a lab host: one hypervisor's network agent."""

    def __init__(self, lab: Lab, host: str, hypervisor: int, prefix: str, state_dir: Path) -> None:
        self.lab, self.host, self.hypervisor = lab, host, hypervisor
        self.prefix, self.state_dir = prefix, state_dir
        self.vtep = lab.address(host)
        self.proc: subprocess.Popen[str] | None = None
        self.start()

    def start(self) -> None:
        argv = [sys.executable, "-m", "tests.network.netagent", "--hypervisor", str(self.hypervisor),
                "--vtep", self.vtep, "--prefix", self.prefix, "--state-dir", str(self.state_dir)]
        self.proc = self.lab.popen(self.host, argv, cwd=str(REPO), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   text=True, bufsize=1)
        assert json.loads(self._line()) == {"ready": True}

    def _line(self) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"network agent on {self.host} exited ({self.proc.poll()})")
        return line

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        answer: dict[str, Any] = json.loads(self._line())
        if "error" in answer:
            raise AssertionError(f"{op} on {self.host}: {answer['error']}")
        return answer

    def sync(self, vpcs: list[npb.NetVpcState], full: bool = True) -> dict[str, Any]:
        request = npb.NetSyncRequest(vpcs=vpcs, full=full)
        return self.call("net.sync", request=MessageToDict(request, preserving_proto_field_name=True))["result"]

    def apply(self, request: npb.NetApplyRequest) -> dict[str, Any]:
        return self.call("net.apply", request=MessageToDict(request, preserving_proto_field_name=True))["result"]

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@contextmanager
def lab_world(factory: Any, hosts: list[str], tools: tuple[str, ...], what: str, make: Any) -> Iterator[Any]:
    """A module's world: skipped naming the missing ``tools``, else ``make(lab, run_prefix())`` on a
    lab of ``hosts``, closed and the lab removed afterwards."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"the {what} tests need {', '.join(missing)} (deploy/bootstrap.sh installs them, as root)")
    lab = factory(hosts)
    world = make(lab, run_prefix())
    try:
        yield world
    finally:
        world.close()
        lab.down()


def close_agents(agents: list[AgentProc], guests: list[tuple[AgentProc, str]]) -> None:
    """A test module's teardown: its guests unplugged, then each agent (started again if it died)
    syncs nothing, stops, and its state goes; failures are left to the lab's removal."""
    for agent, name in guests:
        try:
            agent.call("guest.unplug", name=name)
        except AssertionError:
            pass
    for agent in agents:
        try:
            if agent.proc is None or agent.proc.poll() is not None:
                agent.start()
            agent.sync([], full=True)
        except AssertionError:
            pass  # the lab's removal kills and removes whatever is left
        agent.stop()
        remove_state(agent.state_dir)


@dataclass
class Tenant:
    """One tenant's VPC: one subnet (10.0.0.0/24, the same for every tenant), one port per host."""

    vpc_id: int
    vni: int
    letter: str  # MACs 02:<letter><letter>:..., names <word><n>
    word: str
    hosts: list[str]
    generation: int = 1
    extra: list[npb.NetPort] = field(default_factory=list)

    def mac(self, n: int) -> str:
        return f"02:{self.letter * 2}:00:00:00:{n:02x}"

    def macs(self, count: int) -> list[str]:
        return [self.mac(n) for n in range(1, count + 1)]

    def ip(self, n: int) -> str:
        return f"10.0.0.{10 + n}"

    def name(self, n: int) -> str:
        return f"{self.word}{n}"

    def port(self, n: int, hypervisor: int, vtep: str) -> npb.NetPort:
        return npb.NetPort(id=self.vpc_id * 100 + n, subnet_id=self.vpc_id * 10 + 1, mac=self.mac(n), ips=[self.ip(n)],
                           hostname=self.name(n), instance_id=n, hypervisor=hypervisor, vtep=vtep)

    def state(self, agents: list[AgentProc]) -> npb.NetVpcState:
        subnet = npb.NetSubnet(id=self.vpc_id * 10 + 1, vpc_id=self.vpc_id, vni=self.vni, cidr=CIDR, gateway="10.0.0.1",
                               dhcp=True, dhcp_address=DHCP_ADDRESS)
        ports = [self.port(n, agent.hypervisor, agent.vtep) for n, agent in enumerate(agents, 1)]
        return npb.NetVpcState(vpc_id=self.vpc_id, generation=self.generation, mtu=1450,
                               domain=f"{self.word}.test", subnets=[subnet], ports=ports + self.extra)


def capture(lab: Lab, host: str, bridge: str, macs: list[str]) -> subprocess.Popen[str]:
    """tcpdump of the frames from or to ``macs`` on ``bridge``: promiscuous, so it sees every
    frame the bridge forwards, not only those for the host."""
    expression = " or ".join(f"ether host {mac}" for mac in macs)
    return lab.popen(host, ["tcpdump", "-i", bridge, "-n", "-l", expression], stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True)


def captured(tcpdump: subprocess.Popen[str]) -> int:
    """Frames ``tcpdump`` captured, once stopped."""
    tcpdump.send_signal(2)
    _, err = tcpdump.communicate(timeout=10)
    found = re.search(r"^(\d+) packets? captured", err, re.M)
    assert found, err
    return int(found[1])


def in_guest(guest: str, *argv: str) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{guest}", "--", *argv]


def ping(lab: Lab, host: str, guest: str, target: str, count: int = 2) -> bool:
    done = lab.run(host, in_guest(guest, "busybox", "ping", "-c", str(count), "-i", "0.2", "-W", "2", target),
                   capture_output=True, text=True, timeout=30)
    return done.returncode == 0


def resolve(lab: Lab, host: str, guest: str, name: str, server: str = DHCP_ADDRESS) -> str:
    """The address the VPC's DNS gives ``name`` inside ``guest``, "" if none."""
    done = lab.run(host, in_guest(guest, "busybox", "nslookup", name, server), capture_output=True, text=True,
                   timeout=30)
    found = re.findall(r"Address:\s*([0-9.]+)$", done.stdout, re.M)
    return next((a for a in found if a != server), "")


def reaches(lab: Lab, host: str, guest: str, ip: str, name: str, domain: str) -> None:
    """``guest`` on ``host`` pings ``ip``, and by name: the VPC's DNS (the local dnsmasq) gives
    ``name`` and ``name.domain`` that address, and the guest pings it."""
    assert ping(lab, host, guest, ip), f"{guest} on {host} cannot ping {ip}"
    address = resolve(lab, host, guest, name)
    assert address == ip, (guest, name, address)
    assert resolve(lab, host, guest, f"{name}.{domain}") == address
    assert ping(lab, host, guest, address)


@contextmanager
def kernel_cloud(lab: Lab, hosts: list[str], prefix: str) -> Iterator[LabCloud]:
    """A cluster on ``hosts`` (one hypervisor each) whose leaves run the kernel's data plane with
    ``prefix``, stopped and its state removed afterwards (the lab is the caller's)."""
    cloud = LabCloud(lab, hosts, STATE_BASE / f"cloudland-{lab.prefix}",
                     settings={"CLOUDLAND_NETWORK": "kernel", "CLOUDLAND_NETWORK_PREFIX": prefix})
    try:
        cloud.start(hypervisors=len(hosts), per_leaf=1, fanout=4)
        yield cloud
    finally:
        cloud.stop()
        shutil.rmtree(cloud.state_dir, ignore_errors=True)


def kernel_objects(lab: Lab, host: str, prefix: str) -> dict[str, Any]:
    """What ``host`` holds of ours, read with ip, bridge and /proc: links and network namespaces
    named with ``prefix``, FDB entries to a VTEP, permanent neighbours, dnsmasq processes."""
    def out(command: str) -> str:
        return lab.run(host, command, capture_output=True, text=True, check=True, timeout=30).stdout

    links = sorted(re.findall(rf"^\d+: ({prefix}[a-z][a-z0-9]*)[@:]", out("ip -o link show"), re.M))
    namespaces = sorted(n for n in out("ls /run/netns 2>/dev/null || true").split() if n.startswith(prefix))
    fdb = sorted(line for line in out("bridge fdb show").splitlines() if " dst " in line and prefix in line)
    neighbours = sorted(line for line in out("ip neigh show nud permanent").splitlines() if prefix in line)
    dnsmasq = []
    for pid in lab.pids(host):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0] == b"dnsmasq" and any(prefix.encode() in word for word in cmdline):
            dnsmasq.append(pid)
    return {"links": links, "netns": namespaces, "fdb": fdb, "neighbours": neighbours, "dnsmasq": sorted(dnsmasq)}


def remove_state(state_dir: Path) -> None:
    shutil.rmtree(state_dir, ignore_errors=True)


def run_prefix() -> str:
    """This test run's name prefix (Names: at most 6 characters)."""
    return f"n{os.getpid() % 100000}"
