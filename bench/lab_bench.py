"""The tree across the lab's hosts beside the same tree on one host, in the same run.

The lab (deploy/lab) emulates hosts as network namespaces on one machine, each with its own
hostname, /tmp, /dev/shm and /run; MPI's traffic between them crosses veth pairs and a bridge
(TCP through libfabric's sockets provider), as it would cross a switch. Both trees have the
same shape (hypervisors, per leaf, fan-out); the lab's is brought up as an operator does
(``cloudland tree up --hostfile ... --listen ...`` on the controller, one host agent per host),
the other is the all-in-one tree. The client measures from outside the lab through its
cable to the underlay (one extra veth hop for every call). Prints a Markdown table.

    make bench BENCH=lab      # or: .venv/bin/python bench/lab_bench.py [--hosts 4] [--per-leaf 25]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from cloudland.client import RootClient
from cloudland_lab import Lab
from cloudland_launcher.harness import start_tree, stop_tree
from tree_bench import ping_figures  # bench/ is on sys.path when a bench script runs

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def measure(client: RootClient, hypervisors: int, broadcasts: int, unicasts: int) -> dict[str, float]:
    figures = ping_figures(client, hypervisors, broadcasts, unicasts)
    topo = client.topology()
    return {"build_s": topo.build_seconds, "depth": topo.depth, "relays": topo.relays, **figures}


def across_the_lab(hosts: int, per_leaf: int, fanout: int, broadcasts: int, unicasts: int) -> dict[str, float]:
    names = [f"h{i}" for i in range(1, hosts + 1)]
    lab = Lab(prefix=f"b{os.getpid() % 10**7}", subnet="10.78.0.0/24")
    state = Path(tempfile.mkdtemp(prefix="cloudland-lab-bench-", dir="/var/tmp"))  # hosts have private /tmp
    proc = None
    try:
        lab.up(["ctl", *names])
        lab.attach_machine()
        ctl = lab.address("ctl")
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDLAND_")}
        env["CLOUDLAND_PKI"] = str(state / "pki")  # the lab's CA, made by its root; the hosts read it there
        with open(state / "tree-up.out", "wb") as out:
            proc = lab.popen("ctl", [
                str(BIN / "cloudland"), "tree", "--endpoint", f"{ctl}:7101", "up", "--hostfile",
                str(lab.hostfile(names)), "--listen", f"{ctl}:7100", "--hypervisors", str(hosts * per_leaf),
                "--per-leaf", str(per_leaf), "--fanout", str(fanout), "--state-dir", str(state),
                "--launcher-exec", str(lab.ssh)], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=str(REPO))
        with RootClient(f"{ctl}:7101", state / "pki") as client:
            client.wait_ready(timeout=180)
            spread = {h.name for h in client.hosts().hosts}
            assert spread == set(names), spread
            return measure(client, hosts * per_leaf, broadcasts, unicasts)
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
        lab.down()
        shutil.rmtree(state, ignore_errors=True)


def on_one_host(hosts: int, per_leaf: int, fanout: int, broadcasts: int, unicasts: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="cloudland-bench-") as tmp:
        tree = start_tree(Path(tmp), hosts * per_leaf, per_leaf, fanout, 1.0)
        try:
            return measure(tree.client, hosts * per_leaf, broadcasts, unicasts)
        finally:
            stop_tree(tree)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--per-leaf", type=int, default=25, help="simulated hypervisors per host")
    parser.add_argument("--fanouts", default="2,32", help="fan-outs to measure (2 puts relays on hosts)")
    parser.add_argument("--broadcasts", type=int, default=50)
    parser.add_argument("--unicasts", type=int, default=300)
    args = parser.parse_args()
    rows = []
    for fanout in (int(f) for f in args.fanouts.split(",")):
        for where, run in (("lab, one host agent per host", across_the_lab), ("one host (all-in-one)", on_one_host)):
            print(f"… {where}, fan-out {fanout}", file=sys.stderr, flush=True)
            row = run(args.hosts, args.per_leaf, fanout, args.broadcasts, args.unicasts)
            rows.append({"where": where, "fanout": fanout, **row})
    load = os.getloadavg()[0]
    print(f"{args.hosts} hosts x {args.per_leaf} simulated hypervisors = {args.hosts * args.per_leaf}; "
          f"load average {load:.1f}")
    print("| where | fan-out | relays (depth) | build s | broadcast+gather median / p99 ms "
          "| unicast RTT median / p99 ms |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['where']} | {r['fanout']} | {r['relays']} ({r['depth']}) | {r['build_s']:.1f} "
              f"| {r['bcast_median_ms']:.1f} / {r['bcast_p99_ms']:.1f} "
              f"| {r['unicast_median_ms']:.2f} / {r['unicast_p99_ms']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
