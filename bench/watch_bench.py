"""Benchmark observed state as a stream (Watch) against the 2 s poll it replaced, in the same run.

A real tree of N simulated hypervisors (default 10,000; leaves packed as tree_bench.py packs
them, fan-out 32, heartbeat 2 s) is filled with V running domains each (default 20) by one
broadcast of the test operation ``test.seed_domains``: every domain carries CloudLand's
metadata, and the database (SQLite, migrated, the admin bootstrapped) gets the matching
instance rows in bulk SQL, an hour old, so every one is settled and none is recovered.

startup   The API as its own process (``python -m cloudland_api``) on that database and tree:
          seconds until it answers HTTP, and until the database shows every hypervisor ``up``
          with its V domains (the first snapshot written).
idle      CPU of the API process per second, over 30 s, once started and settled: nothing
          changes, so the stream is silent. Baseline: the reconciler it replaced (``api/sync.py``
          as of commit POLLING_COMMIT, its Health poll every 2 s), run alone in a process of its own on
          the same database and tree, over the same 30 s.
latency   ~50 changes, one at a time: ``vm.stop`` of a random VM sent to its hypervisor through
          the root, then the database polled (every 5 ms, read-only) until the instance reads
          ``stopped``. Median and p99 from the send; the send's own round trip beside them.

The load average is printed: on a shared 2-core machine it moves the figures more than
anything else. Prints a Markdown table for the README.

    .venv/bin/python bench/watch_bench.py [--hypervisors 10000] [--vms 20] [--changes 50]
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_bench import Api, cpu_seconds, percentile, seeding  # noqa: E402 - bench/ is not a package

from cloudland.client import RootClient  # noqa: E402
from cloudland.config import TreeSettings  # noqa: E402
from cloudland_agents.ops import seeded_uuid  # noqa: E402
from cloudland_api.models import Hypervisor, Instance  # noqa: E402
from cloudland_launcher.harness import start_tree, stop_tree, wait_for  # noqa: E402
from cloudland_proto.v1 import compute_pb2 as cpb  # noqa: E402
from cloudland_proto.v1 import diag_pb2 as diag  # noqa: E402
from cloudland_proto.v1 import envelope_pb2 as pb  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
IDLE_S = 30.0

# The baseline: the polling reconciler this replaced, run alone. It reads the tree's Health every
# 2 s, as the API did. POLLING_COMMIT is the last commit whose api/sync.py polled (its one import
# from a module that has moved since is mapped to today's layout).
POLLING_COMMIT = "e7d0eea"
POLLER = """
import importlib.util, sys, time
from sqlalchemy.orm import sessionmaker
from cloudland_api.db import make_engine, session_factory
spec = importlib.util.spec_from_file_location("old_sync", sys.argv[1])
old = importlib.util.module_from_spec(spec); spec.loader.exec_module(old)
reconciler = old.Reconciler(session_factory(make_engine(sys.argv[2]), write=True), sys.argv[3], interval_s=2.0)
reconciler.start()
print("started", flush=True)
time.sleep(3600)
"""


def seed_database(url: str, state_dir: Path, hypervisors: int, vms: int) -> float:
    """Migrate, bootstrap the admin; the hypervisors' rows (as if seen before) and ``vms`` running
    instances on each, matching ``test.seed_domains``. Seconds taken."""
    t0 = time.perf_counter()
    with seeding(url, state_dir) as (session, owner, flavor, image):
        then = datetime.now(UTC) - timedelta(hours=1)
        session.execute(insert(Hypervisor), [
            {"id": h, "hostname": f"sim-{h:05d}", "cpus": 16, "memory_mib": 64 * 1024, "free_memory_mib": 0,
             "state": "down", "vcpus_claimed": 0, "memory_claimed_mib": 0, "last_seen": then}
            for h in range(hypervisors)])
        total = hypervisors * vms
        for start in range(1, total + 1, 20_000):
            session.execute(insert(Instance), [
                {"id": i, **owner, "name": f"vm-{i}", "uuid": seeded_uuid(i), "flavor_id": flavor,
                 "image_id": image, "vcpus": 1, "memory_mib": 64, "disk_gib": 1,
                 "hypervisor_id": (i - 1) // vms, "status": "running", "created_at": then, "updated_at": then}
                for i in range(start, min(total, start + 19_999) + 1)])
    return time.perf_counter() - t0


def seed_domains(client: RootClient, hypervisors: int, vms: int, wave: int = 500) -> float:
    """``test.seed_domains`` in waves of ``wave`` hypervisors (all at once starves leaves of CPU on
    2 cores), each wave retried where a leaf was lost meanwhile (its restart starts empty)."""
    t0 = time.perf_counter()
    for first in range(0, hypervisors, wave):
        todo = list(range(first, min(hypervisors, first + wave)))
        for _ in range(10):
            _ok, others = client.gather("test.seed_domains", todo, request=diag.TestSeedDomainsRequest(per_hypervisor=vms),
                                         timeout=600)
            assert all(r.status == pb.UNAVAILABLE for r in others), others[:3]
            todo = [r.hypervisor for r in others]
            if not todo:
                break
            time.sleep(5)
        assert not todo, f"hypervisors not seeded: {todo[:10]}"
    return time.perf_counter() - t0


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def idle_cpu(pid: int, seconds: float = IDLE_S) -> float:
    """CPU of ``pid`` per wall second over ``seconds``."""
    before, t0 = cpu_seconds([pid]), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds([pid]) - before) / (time.monotonic() - t0)


def settle(pid: int, limit_s: float = 600) -> float:
    """Wait until ``pid`` uses under 10% of a core over 5 s (the converger's first pass is done)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s and idle_cpu(pid, 5.0) > 0.10:
        pass
    return time.monotonic() - t0


def latencies(client: RootClient, db: Path, hypervisors: int, vms: int, count: int,
              rng: random.Random) -> tuple[list[float], list[float]]:
    """``count`` changes: (send → database, send → reply) in seconds each."""
    reader = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    to_db, to_reply = [], []
    try:
        for instance_id in rng.sample(range(1, hypervisors * vms + 1), count):
            hv = (instance_id - 1) // vms
            t0 = time.monotonic()
            stop = cpb.VmStopRequest(name=f"cl-{seeded_uuid(instance_id)}", force=True)
            [reply] = client.run("vm.stop", hv, request=stop, timeout=60)
            to_reply.append(time.monotonic() - t0)
            assert reply.status == pb.OK, reply.error
            while reader.execute("select status from instances where id = ?", (instance_id,)).fetchone()[0] \
                    != "stopped":
                if time.monotonic() - t0 > 60:
                    raise AssertionError(f"instance {instance_id} not stopped in the database after 60 s")
                time.sleep(0.005)
            to_db.append(time.monotonic() - t0)
    finally:
        reader.close()
    return to_db, to_reply


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hypervisors", type=int, default=10_000)
    parser.add_argument("--vms", type=int, default=20, help="running VMs per hypervisor")
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--heartbeat", type=float, default=2.0,
                        help="the tree's heartbeat (s): a leaf reporting 100+ hypervisors on a loaded machine "
                             "can miss 10 beats of 1 s and be taken for lost")
    args = parser.parse_args()
    n, v = args.hypervisors, args.vms
    per_leaf = TreeSettings(hypervisors=n, fanout=32).shape.per_leaf
    rng = random.Random(7)
    old_sync = subprocess.run(["git", "-C", str(REPO), "show", f"{POLLING_COMMIT}:api/sync.py"], check=True,
                              capture_output=True, text=True).stdout
    old_sync = old_sync.replace("from cloudland_api.hypervisors import", "from cloudland_api.services.hypervisors import")
    with tempfile.TemporaryDirectory(prefix="watch-bench-") as tmp:
        work = Path(tmp)
        (work / "old_sync.py").write_text(old_sync)
        db = work / "api" / "cloudland.db"
        url = f"sqlite:///{db}"
        print(f"… tree of {n} hypervisors ({per_leaf} per leaf)", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        tree = start_tree(work / "tree", n, per_leaf, 32, args.heartbeat)
        os.environ["CLOUDLAND_PKI"] = str(tree.pki_dir)  # the API and any client present its control certificate
        tree_s = time.perf_counter() - t0
        api = poller = None
        try:
            print(f"… {n * v} domains and rows", file=sys.stderr, flush=True)
            (work / "api").mkdir()
            rows_s = seed_database(url, work / "api", n, v)
            domains_s = seed_domains(tree.client, n, v)
            # Every seeded report at the root (a leaf lost meanwhile re-reports once linked again).
            wait_for(lambda: tree.client.topology().ready, 300, "the tree ready again")
            time.sleep(3)
            print(f"… API (stream) starting; load {loadavg()}", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            api = Api(work / "api", url, tree.endpoint)
            answers_s = time.monotonic() - t0
            reader = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
            wait_for(lambda: reader.execute("select count(*) from hypervisors where state = 'up' and domains = ?",
                                            (v,)).fetchone()[0] == n, 600, "every hypervisor up with its domains",
                     every=0.2)
            reader.close()
            written_s = time.monotonic() - t0
            settled_s = settle(api.proc.pid)
            print(f"… idle {IDLE_S:.0f} s (stream); load {loadavg()}", file=sys.stderr, flush=True)
            load_stream = loadavg()
            stream_cpu = idle_cpu(api.proc.pid)
            print(f"… {args.changes} changes", file=sys.stderr, flush=True)
            to_db, to_reply = latencies(tree.client, db, n, v, args.changes, rng)
            api.stop()
            api = None
            print(f"… baseline: the reconciler of {POLLING_COMMIT}, polling every 2 s", file=sys.stderr, flush=True)
            with open(work / "poller.out", "wb") as out:
                poller = subprocess.Popen([sys.executable, "-c", POLLER, str(work / "old_sync.py"), url,
                                           tree.endpoint], stdout=out, stderr=subprocess.STDOUT)
            time.sleep(10)  # its first passes
            load_poll = loadavg()
            poll_cpu = idle_cpu(poller.pid)
            poll_log = (work / "poller.out").read_text(errors="replace")
        finally:
            if poller is not None:
                poller.kill()
                poller.wait()
            if api is not None:
                api.stop()
            stop_tree(tree)
    median, p99 = statistics.median(to_db), percentile(to_db, 0.99)
    print(f"\n{n:,} hypervisors × {v} VMs ({n * v:,}); tree up in {tree_s:.0f} s, rows seeded in {rows_s:.1f} s, "
          f"domains in {domains_s:.1f} s\n")
    print("| what | stream (Watch) | baseline: 2 s poll (e7d0eea) |")
    print("|---|---|---|")
    print(f"| API CPU while idle, 30 s | {stream_cpu * 100:.1f}% of a core (load {load_stream}) "
          f"| {poll_cpu * 100:.1f}% of a core (load {load_poll}) |")
    print(f"| API answers after start | {answers_s:.1f} s | |")
    print(f"| first snapshot written after start | {written_s:.1f} s (then {settled_s:.0f} s to settle) | |")
    print(f"| change → database, median / p99 ({len(to_db)} changes) | {median:.2f} s / {p99:.2f} s "
          f"(the vm.stop round trip alone: {statistics.median(to_reply):.2f} s) | up to 2 s poll + its pass |")
    if "sync_failed" in poll_log or "Traceback" in poll_log:
        print(f"\nbaseline log (last lines):\n{poll_log[-1500:]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
