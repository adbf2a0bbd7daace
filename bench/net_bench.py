"""Benchmark tenant networks' deltas: multicast to a VPC's hypervisors against a broadcast, in one run.

A real tree of N simulated hypervisors (default 1,000; leaves packed as tree_bench.py packs them,
fan-out 32) and the API as its own process (``python -m cloudland_api``, SQLite), as ``cloudland
up`` runs them. Simulated hypervisors have the fake data plane (agents/network/fake.py), each
with a VTEP of its own, so each holds FDB entries for the other hypervisors' ports.

setup     One VPC per spread (default 1,000, 100 and 10 hypervisors), one subnet each (a /20,
          DHCP on), and as many VMs on it (``vm create --network``) as the spread, one on each of
          as many hypervisors strewn over the tree (ids i × N / spread): the bench disables every
          other hypervisor meanwhile (``PATCH enabled``) and the spreading scheduler places them;
          where it put two on one, the hypervisors left without one get another round (so a
          VPC may hold a few more ports than hypervisors). The VPC is ready when every hypervisor of it holds the VPC's
          generation (``net.show``).
latency   Per sample, one VM created on the VPC's subnet through the API, so one new port: the
          job engine places it and binds the port, which makes the VPC's delta (``net.apply``,
          multicast to exactly the VPC's hypervisors, api/jobs/net.py). The time from the
          ``POST /instances`` to the new port's FDB entry present on every other hypervisor of the
          VPC is observed, not assumed: ``net.show`` asks those hypervisors for the entry and each
          answers when its data plane made it (``since_ms``); a sample's time is the latest of
          them. The VM is deleted again before the next sample (its port leaves: another delta),
          so the VPC keeps its spread.
messages  The tree messages a delta cost (proto/README.md §3, "Message counts"): the delta the
          API sent (read from its job row) sent again through the root, as the multicast it was
          (to the same hypervisors) and, the baseline, as a broadcast to the whole cluster. The
          hypervisors of the VPC hold it already and answer it as a replay, the others answer
          ``need_sync`` and change nothing (an agent that does not hold a VPC ignores its
          deltas), so the two differ only in where the tree carries the delta. Beside the counts,
          the time from the send to the last answer, median of the samples. The VPCs here are
          strewn over the tree, a multicast's worst case: with simulated hypervisors packed many
          to a leaf, a VPC of 100 of 1,000 touches nearly every leaf. So the delta is also sent
          to as many hypervisors side by side (ids 0 .. n-1, "packed"): the best case, its count
          in brackets.

CPU seconds of the API and of the tree's ranks per sample (the create, its observation, the three
sends of its delta, the delete and the wait for it; idle ranks' polling included), a sample's
length, the tree's CPU per second while it does nothing (measured for 5 s before the samples:
its share of a sample is that times the sample's length), and the load average, are printed: on a shared 2-core machine the load moves the figures more than anything
else. Prints a
Markdown table for the README; ``--json`` prints the rows as JSON as well (the test reads it).

    .venv/bin/python bench/net_bench.py [--hypervisors 1000] [--spreads 10,100,1000] [--samples 20]
    .venv/bin/python bench/net_bench.py --quick     # 100 hypervisors, spreads 10 and 100, 3 samples
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from google.protobuf.json_format import ParseDict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_bench import TERMINAL, Api, cpu_seconds, percentile, tree_pids  # noqa: E402 - bench/ is not a package

from cloudland import operations  # noqa: E402
from cloudland.client import RootClient  # noqa: E402
from cloudland.config import TreeSettings  # noqa: E402
from cloudland_launcher.harness import Tree, start_tree, stop_tree, wait_for  # noqa: E402
from cloudland_proto.v1 import envelope_pb2 as pb  # noqa: E402
from cloudland_proto.v1 import network_pb2 as npb  # noqa: E402

IDLE_S = 5.0  # how long the tree's idle CPU is measured, before each VPC's samples
NO_MAC = "00:00:00:00:00:00"  # a filter that matches no entry: net.show answers the generations only


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def pages(api: Api, path: str, **params: Any) -> list[dict[str, Any]]:
    """Every item of a paged list."""
    items: list[dict[str, Any]] = []
    after = None
    while True:
        page = api.call("GET", path, limit=500, after=after, **params)
        items += page["items"]
        after = page["next_after"]
        if not after:
            return items


def shown(client: RootClient, hypervisors: set[int], macs: list[str]) -> dict[int, npb.NetShowResult]:
    """Each hypervisor's ``net.show`` answer; an answer that is not OK is an error naming it."""
    found: dict[int, npb.NetShowResult] = {}
    for reply in client.run("net.show", sorted(hypervisors), request=npb.NetShowRequest(macs=macs), timeout=60):
        if reply.status != pb.OK:
            raise RuntimeError(f"net.show on hypervisor {reply.hypervisor}: {pb.Status.Name(reply.status)} "
                               f"{reply.error}")
        found[reply.hypervisor] = operations.result_of(reply, "net.show")  # type: ignore[assignment]
    return found


def wait_generation(client: RootClient, hypervisors: set[int], vpc_id: int, generation: int,
                    timeout: float = 600) -> None:
    """Until every one of ``hypervisors`` holds the VPC at ``generation`` or later."""
    def behind() -> set[int]:
        return {hv for hv, result in shown(client, hypervisors, [NO_MAC]).items()
                if not any(v.vpc_id == vpc_id and v.generation >= generation for v in result.vpcs)}

    end = time.monotonic() + timeout
    while (late := behind()):
        if time.monotonic() > end:
            raise AssertionError(f"vpc {vpc_id}: {len(late)} hypervisors below generation {generation} after "
                                 f"{timeout:.0f} s, e.g. {sorted(late)[:10]}")
        time.sleep(0.5)


class Cloud:
    """The API and tree, and the helpers the bench's steps share."""

    def __init__(self, api: Api, tree: Tree, database: Path) -> None:
        self.api, self.tree, self.client = api, tree, tree.client
        self.db = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)

    def wait_job(self, job_id: str, timeout: float = 300) -> str:
        end = time.monotonic() + timeout
        while (state := self.api.call("GET", f"/jobs/{job_id}")["state"]) not in TERMINAL:
            if time.monotonic() > end:
                raise AssertionError(f"job {job_id} still {state} after {timeout:.0f} s")
            time.sleep(0.02)
        return state

    def vpc(self, vpc_id: int) -> dict[str, Any]:
        return self.api.call("GET", f"/vpcs/{vpc_id}")

    def placed(self, vpc_id: int) -> dict[int, int]:
        """Each bound port of the VPC: port id -> hypervisor."""
        return {p["id"]: p["hypervisor_id"] for p in pages(self.api, "/ports", vpc=vpc_id)
                if p["hypervisor_id"] is not None}

    def last_apply(self, vpc_id: int) -> tuple[str, str, npb.NetApplyRequest, list[int]]:
        """The VPC's newest ``apply`` job: (id, state, the delta it carries, the hypervisors told)."""
        row = self.db.execute("SELECT id, state, args FROM jobs WHERE kind = 'net' AND action = 'apply' "
                              "AND subject_type = 'vpc' AND subject_id = ? ORDER BY created_at DESC, id DESC "
                              "LIMIT 1", (vpc_id,)).fetchone()
        assert row is not None, f"vpc {vpc_id} has no apply job"
        args = json.loads(row[2])
        return row[0], row[1], ParseDict(args["request"], npb.NetApplyRequest()), list(args["hypervisors"])


def enable_only(api: Api, chosen: set[int] | None) -> None:
    """Open only ``chosen`` hypervisors (None: all) to new VMs, as an operator would (``PATCH``)."""
    for hv in pages(api, "/hypervisors"):
        wanted = chosen is None or hv["id"] in chosen
        if hv["enabled"] != wanted:
            api.call("PATCH", f"/hypervisors/{hv['id']}", {"enabled": wanted})


def set_up(cloud: Cloud, spread: int, index: int, hypervisors: int) -> dict[str, Any]:
    """A VPC with one subnet and ``spread`` VMs on it, one on each of ``spread`` hypervisors strewn
    over the tree (ids ``i * hypervisors // spread``, as a spreading scheduler leaves a tenant's
    VMs: under many leaves and relays), every hypervisor of it at the VPC's generation."""
    api = cloud.api
    chosen = {i * hypervisors // spread for i in range(spread)}
    enable_only(api, chosen)  # the scheduler places; the bench only says where it may
    vpc = api.call("POST", "/vpcs", {"name": f"bench{spread}"})
    subnet = api.call("POST", "/subnets", {"name": f"bench{spread}", "vpc": vpc["id"],
                                           "cidr": f"10.{index}.0.0/20"})
    lacking = set(chosen)
    for attempt in range(10):  # the scheduler may double some up: the rest get another round
        enable_only(api, lacking)
        accepted = api.call("POST", "/instances", {"name": f"s{spread}-{attempt}", "flavor": "tiny", "image": "raw",
                                                    "count": len(lacking), "networks": [subnet["id"]]})
        api.wait_batches([accepted["batch"]], len(lacking), timeout=1800, every=0.5)
        lacking = chosen - set(cloud.placed(vpc["id"]).values())
        if not lacking:
            break
    enable_only(api, None)
    placed = cloud.placed(vpc["id"])
    if set(placed.values()) != chosen:
        raise AssertionError(f"vpc {vpc['id']}: ports on {len(set(placed.values()) & chosen)} of the {spread} "
                             f"hypervisors chosen, and on {sorted(set(placed.values()) - chosen)[:10]} besides")
    hypervisors = chosen
    # Each hypervisor that joined gets the VPC's whole state by a sync, one after another (one job
    # at a time per VPC): at a thousand, minutes.
    wait_generation(cloud.client, hypervisors, vpc["id"], cloud.vpc(vpc["id"])["generation"], timeout=3600)
    return {"vpc": vpc["id"], "subnet": subnet["id"], "hypervisors": hypervisors, "ports": len(placed)}


def sample(cloud: Cloud, vpc: dict[str, Any], n: int) -> dict[str, Any]:
    """One port created (with a VM), observed on every other hypervisor of the VPC, measured, and
    the VM deleted again; the figures of it."""
    api, client = cloud.api, cloud.client
    before = cloud.vpc(vpc["vpc"])["generation"]
    t0 = time.time()
    accepted = api.call("POST", "/instances", {"name": f"m{len(vpc['hypervisors'])}-{n}", "flavor": "tiny",
                                                "image": "raw", "networks": [vpc["subnet"]]})
    [instance] = accepted["instances"]
    [port] = api.call("GET", "/ports", instance=instance["id"])["items"]
    cloud.wait_job(accepted["jobs"][0]["id"])
    home = api.call("GET", f"/instances/{instance['id']}")["hypervisor_id"]
    others = vpc["hypervisors"] - {home}
    job_id, state, delta, told = cloud.last_apply(vpc["vpc"])
    assert delta.generation == before + 1 and any(p.mac == port["mac"] for p in delta.upsert_ports), \
        f"vpc {vpc['vpc']}: job {job_id} is not the delta of port {port['id']} (generation {delta.generation})"
    end = time.monotonic() + 120
    while True:  # observed: every other hypervisor's data plane holds the entry
        held = {hv: [e.since_ms for e in r.fdb if e.mac == port["mac"]] for hv, r in
                shown(client, others, [port["mac"]]).items()}
        missing = sorted(hv for hv, since in held.items() if not since)
        if not missing:
            break
        if time.monotonic() > end:
            raise AssertionError(f"port {port['id']} ({port['mac']}): no FDB entry on {len(missing)} hypervisors "
                                 f"120 s after its create, e.g. {missing[:10]} (apply job {job_id} {state})")
        time.sleep(0.1)
    latency = max(since[0] for since in held.values()) / 1000 - t0
    costs = {}
    packed = list(range(len(told)))  # as many hypervisors, side by side under as few leaves as can hold them
    for how, targets in (("multicast", told), ("packed", packed), ("broadcast", None)):
        t = time.perf_counter()
        ok, others_replies, messages = client.count("net.apply", targets, request=delta, timeout=60)
        took = time.perf_counter() - t
        answered = len(ok) + len(others_replies)
        bad = [r for r in others_replies if r.status != pb.OK]
        assert not bad, f"{how} of job {job_id}'s delta: {bad[0].error}"
        costs[how] = {"messages": messages, "seconds": took, "answered": answered}
    deleted = api.call("DELETE", f"/instances/{instance['id']}")
    cloud.wait_job(deleted["id"])
    wait_generation(client, vpc["hypervisors"], vpc["vpc"], cloud.vpc(vpc["vpc"])["generation"])
    return {"latency_s": latency, "others": len(others), "told": len(told), **{
        f"{how}_{k}": v for how, c in costs.items() for k, v in c.items()}}


def run(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    per_leaf = TreeSettings(hypervisors=args.hypervisors, fanout=32).shape.per_leaf  # as tree_bench.py
    print(f"… tree of {args.hypervisors} hypervisors ({per_leaf} per leaf), API on SQLite; load {loadavg()}",
          file=sys.stderr, flush=True)
    tree = start_tree(work / "tree", args.hypervisors, per_leaf, 32, 1.0)
    os.environ["CLOUDLAND_PKI"] = str(tree.pki_dir)  # the API presents its control certificate
    api = None
    try:
        database = work / "api" / "cloudland.db"
        api = Api(work / "api", f"sqlite:///{database}", tree.endpoint)
        wait_for(lambda: sum(h["state"] == "up" and bool(h["vtep"]) for h in pages(api, "/hypervisors"))
                 == args.hypervisors, 300, "every hypervisor up, with its VTEP, in the API", every=1.0)
        api.call("POST", "/flavors", {"name": "tiny", "vcpus": 1, "memory_mib": 64, "disk_gib": 1})
        image = api.call("POST", "/images", {"name": "raw", "disk_format": "raw"})
        reply = api.http.put(f"/images/{image['id']}/file", content=b"\0" * 4096,  # type: ignore[union-attr]
                             headers={"Content-Type": "application/octet-stream"})
        assert reply.status_code == 200, reply.text
        cloud = Cloud(api, tree, database)
        rows = []
        for index, spread in enumerate(sorted(args.spreads, reverse=True), 1):
            print(f"… VPC over {spread} hypervisors: {spread} VMs; load {loadavg()}", file=sys.stderr, flush=True)
            t = time.monotonic()
            vpc = set_up(cloud, spread, index, args.hypervisors)
            setup_s = time.monotonic() - t
            pids = [api.proc.pid], tree_pids(tree)
            idle0, t_idle = cpu_seconds(pids[1]), time.monotonic()
            time.sleep(IDLE_S)  # the tree doing nothing: its ranks' polling and heartbeats alone
            idle_cpu = (cpu_seconds(pids[1]) - idle0) / (time.monotonic() - t_idle)
            print(f"… {args.samples} ports on it, one at a time; load {loadavg()}", file=sys.stderr, flush=True)
            cpu0, t_samples = (cpu_seconds(pids[0]), cpu_seconds(pids[1])), time.monotonic()
            samples = [sample(cloud, vpc, n) for n in range(args.samples)]
            cpu1, sample_s = (cpu_seconds(pids[0]), cpu_seconds(pids[1])), (time.monotonic() - t_samples) / len(samples)
            latencies = [s["latency_s"] for s in samples]
            rows.append({
                "hypervisors": args.hypervisors, "spread": spread, "ports": vpc["ports"], "samples": len(samples),
                "setup_s": setup_s,
                "median_s": statistics.median(latencies), "p99_s": percentile(latencies, 0.99),
                "others": statistics.median(s["others"] for s in samples),
                **{f"{how}_{k}": statistics.median(s[f"{how}_{k}"] for s in samples)
                   for how in ("multicast", "packed", "broadcast") for k in ("messages", "seconds", "answered")},
                "api_cpu_s": (cpu1[0] - cpu0[0]) / len(samples), "tree_cpu_s": (cpu1[1] - cpu0[1]) / len(samples),
                "sample_s": sample_s, "idle_tree_cpu": idle_cpu,
                "load": loadavg(),
            })
        cloud.db.close()
        return rows
    finally:
        if api is not None:
            api.stop()
        stop_tree(tree)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hypervisors", type=int, default=1000)
    parser.add_argument("--spreads", default="10,100,1000", help="comma-separated VPC sizes, in hypervisors")
    parser.add_argument("--samples", type=int, default=20, help="ports created per VPC")
    parser.add_argument("--quick", action="store_true", help="100 hypervisors, spreads 10 and 100, 3 samples")
    parser.add_argument("--json", action="store_true", help="also print the rows as one JSON line")
    args = parser.parse_args()
    if args.quick:
        args.hypervisors, args.spreads, args.samples = 100, "10,100", 3
    args.spreads = [int(s) for s in args.spreads.split(",")]
    if max(args.spreads) > args.hypervisors:
        parser.error(f"a VPC cannot spread over more than the {args.hypervisors} hypervisors")
    with tempfile.TemporaryDirectory(prefix="cl-netbench-") as tmp:
        rows = run(args, Path(tmp))
    print(f"\n{args.hypervisors:,} simulated hypervisors, one VPC per spread, {args.samples} ports created on each "
          f"(load {rows[-1]['load']} at the end); VPCs set up in "
          + ", ".join(f"{r['setup_s']:.0f} s ({r['spread']:,}: {r['ports']:,} ports)" for r in rows) + "\n")
    print("| VPC over | port create → FDB entry on every other hypervisor, median / p99 | tree messages: "
          "multicast / broadcast (packed VPC) | delta sent to all answered: multicast / broadcast "
          "| CPU per sample: API / tree | sample length; tree CPU idle |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['spread']:,} hypervisors | {r['median_s']:.3f} s / {r['p99_s']:.3f} s "
              f"| {r['multicast_messages']:.0f} / {r['broadcast_messages']:.0f} ({r['packed_messages']:.0f}) "
              f"| {r['multicast_seconds']:.3f} s / {r['broadcast_seconds']:.3f} s "
              f"| {r['api_cpu_s']:.2f} s / {r['tree_cpu_s']:.2f} s | {r['sample_s']:.1f} s; {r['idle_tree_cpu']:.2f} s/s |")
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
