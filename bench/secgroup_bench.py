"""Benchmark security-group updates on one hypervisor (issue 12, must-show 7): the latency of adding
one rule to a group that every local port uses, and the size of the nftables transaction it
sends, beside a per-rule baseline in the same run.

    group     agents/network/firewall.py: the VPC's state with the group's new rule converged
              as ``net.apply`` does it (plan the hypervisor's ruleset, diff it against what the
              agent's last transaction left, one ``nft -f``). The rule lives once, in the
              group's chain, whatever the number of ports. Also shown: the same with our tables
              read from the kernel first (``nft -j``), as a full sync and the repair loop do.
    per-port  the baseline: the same rule as the iptables-era engines keep it (sdn-peers.md), a
              copy in every port's chain, added in one ``nft -f`` of one ``add rule`` per port
              (the transaction alone: no read, no plan).

Runs as root in a network namespace of its own (removed at the end); the ports are names in the
ruleset (no links are needed for the rules). Each figure is the median of ``--repeat`` adds (each
followed by the rule's removal, not timed). Prints a Markdown table for the README.

    .venv/bin/python bench/secgroup_bench.py [--ports 100,1000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pyroute2 import netns  # noqa: E402

from cloudland_agents.network.firewall import Firewall  # noqa: E402
from cloudland_agents.network.names import Names  # noqa: E402
from cloudland_proto.v1 import network_pb2 as npb  # noqa: E402

GROUP = 1
NEW_RULE = npb.NetSecurityRule(id=99, protocol="tcp", port_min=22, port_max=22, remote_cidr="0.0.0.0/0")


def vpc(ports: int, extra: bool) -> npb.NetVpcState:
    """One VPC of ``ports`` local ports, all in the default-like group 1 (and its new rule with ``extra``)."""
    network = ipaddress.IPv4Network("10.0.0.0/16")
    subnet = npb.NetSubnet(id=1, vpc_id=1, vni=1, cidr=str(network), gateway="10.0.0.1", dhcp=True)
    hosts = network.hosts()
    next(hosts)  # the gateway
    members = []
    state = npb.NetVpcState(vpc_id=1, generation=1, mtu=1450, subnets=[subnet])
    for n in range(1, ports + 1):
        ip = str(next(hosts))
        members.append(ip)
        state.ports.append(npb.NetPort(id=n, subnet_id=1, mac=f"02:c1:00:00:{n >> 8:02x}:{n & 0xff:02x}", ips=[ip],
                                       hypervisor=1, security_groups=[GROUP]))
    rules = [npb.NetSecurityRule(id=1, egress=True, protocol="any"),
             npb.NetSecurityRule(id=2, protocol="any", remote_group=GROUP)]
    state.security_groups.append(npb.NetSecurityGroup(id=GROUP, rules=rules + ([NEW_RULE] if extra else []),
                                                      member_ips=members))
    return state


def nft(script: str) -> None:
    subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True, capture_output=True)


def measure(ports: int, repeat: int) -> dict[str, float | int]:
    names = Names("sgb")
    firewall = Firewall(1, names)
    started = time.perf_counter()
    firewall.converge([vpc(ports, False)])
    first = time.perf_counter() - started
    group, per_port, fresh = [], [], []
    size = (0, 0)
    for _ in range(repeat):
        started = time.perf_counter()
        firewall.converge([vpc(ports, True)], fresh=False)  # as net.apply and a partial net.sync do
        group.append(time.perf_counter() - started)
        size = (firewall.last.count("\n"), len(firewall.last))
        firewall.converge([vpc(ports, False)])
        started = time.perf_counter()
        firewall.converge([vpc(ports, True)], fresh=True)
        fresh.append(time.perf_counter() - started)
        firewall.converge([vpc(ports, False)])
    taps = [names.tap(p.mac) for p in vpc(ports, False).ports]
    baseline = "".join(f"add rule inet sgbfw pi_{tap} meta l4proto tcp th dport 22 accept\n" for tap in taps)
    for _ in range(repeat):
        started = time.perf_counter()
        nft(baseline)
        per_port.append(time.perf_counter() - started)
        firewall.converge([vpc(ports, False)])  # each port's chain as planned again (not timed)
    firewall.converge([])
    return {"ports": ports, "first": first, "group": statistics.median(group), "fresh": statistics.median(fresh), "group_commands": size[0],
            "group_bytes": size[1], "per_port": statistics.median(per_port), "per_port_commands": len(taps),
            "per_port_bytes": len(baseline)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ports", default="100,1000", help="comma-separated numbers of local ports")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("secgroup_bench: needs root (a network namespace of its own)")
    name = f"sgbench{os.getpid()}"
    netns.create(name)
    try:
        netns.setns(name)
        load = os.getloadavg()[0]
        rows = [measure(int(n), args.repeat) for n in args.ports.split(",")]
    finally:
        netns.remove(name)
    print(f"load average at start {load:.1f}, {os.cpu_count()} cores; medians of {args.repeat}")
    print("| ports | first sync | one rule added to the group of all: latency | its transaction "
          "| the same, tables read first | per-port baseline: latency | its transaction |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['ports']} | {row['first'] * 1000:.0f} ms | {row['group'] * 1000:.1f} ms "
              f"| {row['group_commands']} commands, {row['group_bytes']} B | {row['fresh'] * 1000:.0f} ms "
              f"| {row['per_port'] * 1000:.1f} ms "
              f"| {row['per_port_commands']} commands, {row['per_port_bytes']} B |")


if __name__ == "__main__":
    main()
