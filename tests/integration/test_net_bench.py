"""bench/net_bench.py runs and its output parses (issue 11, must-show 5): ``--quick``, a real tree
of 100 simulated hypervisors and the API. Its speed is the bench's to show, not this test's; what
is checked is what the figures mean: every other hypervisor of the VPC was seen holding the new
port's entry, a delta multicast to a VPC of 10 costs fewer tree messages than its broadcast, and
a VPC over the whole cluster costs what a broadcast does."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_quick_bench_runs_and_its_figures_parse(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, str(REPO / "bench" / "net_bench.py"), "--quick", "--json"],
                          capture_output=True, text=True, timeout=900, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    rows = json.loads(lines[-1])
    assert [(r["hypervisors"], r["spread"], r["samples"]) for r in rows] == [(100, 100, 3), (100, 10, 3)]
    table = [line for line in lines if re.match(r"^\| [\d,]+ hypervisors \|", line)]
    assert len(table) == 2, done.stdout
    for row, line in zip(rows, table):
        cells = [c.strip() for c in line.strip("|").split("|")]
        median, p99 = (float(x) for x in re.findall(r"([\d.]+) s", cells[1]))
        assert 0 < median <= p99 and abs(p99 - row["p99_s"]) < 0.0006
        assert cells[2] == (f"{row['multicast_messages']:.0f} / {row['broadcast_messages']:.0f} "
                            f"({row['packed_messages']:.0f})")
        assert row["packed_messages"] <= row["multicast_messages"] <= row["broadcast_messages"]
        # Every other hypervisor of the VPC held the entry (the new VM's own may be one of the VPC's).
        assert row["others"] in (row["spread"] - 1, row["spread"])
        # The multicast went to the VPC's hypervisors that already held its subnet: all the others.
        assert row["broadcast_answered"] == 100 and row["multicast_answered"] >= row["others"]
        # The sample's length and the idle tree's CPU (its heartbeats cost something, never nothing).
        assert cells[5] == f"{row['sample_s']:.1f} s; {row['idle_tree_cpu']:.2f} s/s" and row["idle_tree_cpu"] > 0
    whole, small = rows
    assert whole["multicast_messages"] == whole["broadcast_messages"]  # the VPC is the cluster
    # A VPC of 10 strewn over the tree: 10 leaves' paths at most, against all 50 leaves and both relays;
    # packed, its 10 hypervisors sit under 5 leaves of one relay.
    assert small["multicast_messages"] < small["broadcast_messages"] / 2
    assert small["packed_messages"] < small["multicast_messages"]
    assert not list(tmp_path.iterdir()), "the bench left files behind"
