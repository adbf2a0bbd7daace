"""Benchmark the message tree against a flat topology, in the same run.

For 100, 1,000 and 10,000 simulated hypervisors it starts a real tree (fan-out
32) and then a flat one (the root talking to every leaf rank directly), each
within about 100 processes, and measures through the root's gRPC service:
broadcast+gather latency (median, p99), unicast round trip (median, p99), tree
build time, and memory per rank. Prints a Markdown table for the README.

    make bench            # or: .venv/bin/python bench/tree_bench.py [--sizes 100,1000]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cloudland import procinfo
from cloudland.client import RootClient
from cloudland.config import TreeSettings
from cloudland_launcher.harness import start_tree, stop_tree
from cloudland_proto.v1 import envelope_pb2 as pb

TOPOLOGIES = {"tree k=32": 32, "flat": 0}


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (its children, theirs, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            if child not in found:
                found.add(child)
                pending.append(child)
    return found


def ping_figures(client: RootClient, hypervisors: int, broadcasts: int, unicasts: int) -> dict[str, float]:
    """Broadcast+gather and unicast round trips of ``ping`` through the root's gRPC service, in ms."""
    for _ in range(3):  # warm-up: connections, caches
        client.gather("ping", timeout=30)
    bcast = []
    for _ in range(broadcasts):
        t0 = time.perf_counter()
        ok, others = client.gather("ping", timeout=30)
        bcast.append(time.perf_counter() - t0)
        assert len(ok) == hypervisors and not others, others[:3]
    rng = random.Random(1)
    uni = []
    for _ in range(unicasts):
        target = rng.randrange(hypervisors)
        t0 = time.perf_counter()
        [reply] = client.run("ping", target, timeout=10)
        uni.append(time.perf_counter() - t0)
        assert reply.status == pb.OK and reply.hypervisor == target
    return {
        "bcast_median_ms": statistics.median(bcast) * 1e3,
        "bcast_p99_ms": percentile(bcast, 0.99) * 1e3,
        "unicast_median_ms": statistics.median(uni) * 1e3,
        "unicast_p99_ms": percentile(uni, 0.99) * 1e3,
    }


def measure(hypervisors: int, fanout: int, broadcasts: int, unicasts: int, workdir: Path) -> dict[str, float]:
    per_leaf = TreeSettings(hypervisors=hypervisors, fanout=32).shape.per_leaf  # same leaves for both
    started = time.monotonic()
    tree = start_tree(workdir, hypervisors, per_leaf, fanout, 1.0)
    try:
        ready_wall = time.monotonic() - started
        topo = tree.client.topology()
        figures = ping_figures(tree.client, hypervisors, broadcasts, unicasts)
        time.sleep(1.5)  # a heartbeat carries every rank's memory figures up
        peers = tree.client.health().peers
        ranks = [p for p in peers if p.rss_kib] or list(peers)
        helpers = [pid for pid in descendants(tree.proc.pid) if pid not in {p.pid for p in peers}]
        return {
            "hypervisors": hypervisors,
            "processes": 1 + topo.leaves + topo.relays,
            "per_leaf": topo.per_leaf,
            "depth": topo.depth,
            "build_s": topo.build_seconds,
            "ready_wall_s": ready_wall,
            **figures,
            "rss_mib_per_rank": statistics.mean(p.rss_kib for p in ranks) / 1024,
            "pss_mib_per_rank": statistics.mean(p.pss_kib for p in ranks) / 1024,
            # What starts and watches the ranks: MPI's launcher daemons, and host agents.
            "helpers": len(helpers),
            "helpers_rss_mib": sum(procinfo.memory_kib(pid)[0] for pid in helpers) / 1024,
        }
    finally:
        stop_tree(tree)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--broadcasts", type=int, default=50)
    parser.add_argument("--unicasts", type=int, default=300)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="cloudland-bench-") as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            for name, fanout in TOPOLOGIES.items():
                print(f"… {size} hypervisors, {name}", file=sys.stderr, flush=True)
                row = measure(size, fanout, args.broadcasts, args.unicasts, Path(tmp) / f"{size}-{fanout}")
                row["topology"] = name
                rows.append(row)
    print("| hypervisors | topology | processes (per leaf) | depth | build s | broadcast+gather median / p99 ms "
          "| unicast RTT median / p99 ms | RSS / PSS MiB per rank | launcher processes, RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['hypervisors']:,} | {r['topology']} | {r['processes']} ({r['per_leaf']}) | {r['depth']} "
              f"| {r['build_s']:.1f} | {r['bcast_median_ms']:.1f} / {r['bcast_p99_ms']:.1f} "
              f"| {r['unicast_median_ms']:.2f} / {r['unicast_p99_ms']:.2f} "
              f"| {r['rss_mib_per_rank']:.0f} / {r['pss_mib_per_rank']:.0f} "
              f"| {r['helpers']}, {r['helpers_rss_mib']:.0f} |")
    for size in sorted({r["hypervisors"] for r in rows}):
        tree, flat = (next(r for r in rows if r["hypervisors"] == size and r["topology"] == t) for t in TOPOLOGIES)
        print(f"{size:>6} hypervisors: tree/flat broadcast median {tree['bcast_median_ms'] / flat['bcast_median_ms']:.2f}x, "
              f"unicast {tree['unicast_median_ms'] / flat['unicast_median_ms']:.2f}x, "
              f"build {tree['build_s'] / flat['build_s']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
