"""Benchmark the REST control plane against the raw driver and a big database, in the same run.

creates   VM creates per second end to end: ``POST /api/v1/instances`` (one request of 1,000,
          then 10 concurrent requests of 100) until every job of the batch is terminal, polled
          with ``GET /api/v1/jobs?batch=...&limit=1``. A real tree (100 simulated hypervisors,
          fan-out 32, leaves packed as tree_bench.py packs them) and the API as its own process
          (``python -m cloudland_api``, SQLite), as ``cloudland up`` runs them. Then the VMs
          are deleted in requests of 1,000, timed the same way.
          Baselines in the same run: one thread defining and starting domains on one libvirt
          ``test:///`` host opened as agents/hypervisor.py ``open_simulated`` does, with the
          agent's XML builder (``domain_xml``) and with its driver (``LibvirtCompute.create``,
          which also looks the uuid and name up and reads the record back); and the same tree
          without the API: ``vm.create``/``vm.delete`` sent to the root from as many threads as
          the dispatcher has senders, one unicast Dispatch per VM as the dispatcher sends them.
list      ``GET /api/v1/instances?limit=100`` with 100,000 instances in the database: bulk-seeded
          with SQLAlchemy into a freshly migrated database, the API started on it without a
          tree; sequential requests over one keep-alive connection, at random keyset offsets
          (``after``), and with name globs (which scan). Median and p99 as the client sees them,
          and the API's CPU per request. SQLite always; PostgreSQL 15 too with ``--postgres``
          (a throwaway cluster, tests/conftest.py PostgresServer; the table is ANALYZEd after
          the load, as autovacuum soon would).

CPU seconds of the API process (or of this client) and of the tree's ranks are read from
/proc around each create run, to show where the time goes. The load average is printed: on
a shared 2-core machine it moves the figures more than anything else. Prints Markdown tables
for the README.

    make bench                 # tree_bench.py, then this with --postgres; BENCH=api: this one only
    .venv/bin/python bench/api_bench.py [--only creates|list] [--postgres] [--hypervisors 100]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2 as httpx
from sqlalchemy import insert, select

from cloudland import operations
from cloudland.config import TreeSettings
from cloudland_agents.compute.driver import DomainSpec, LibvirtCompute, domain_xml
from cloudland_agents.hypervisor import open_simulated
from cloudland_api.db import make_engine, session_factory, upgrade
from cloudland_api.models import Flavor, Hypervisor, Image, Instance, Organisation
from cloudland_api.models.projects import default_project_id
from cloudland_api.security import ADMIN_CREDENTIALS_FILE, bootstrap_admin
from cloudland_api.services.crud import encode_cursor
from cloudland_api.settings import ApiSettings
from cloudland_launcher.harness import Tree, free_port, start_tree, stop_tree, wait_for
from cloudland_proto.v1 import envelope_pb2 as pb

API = "/api/v1"
TERMINAL = ("succeeded", "failed", "timeout")
REPO = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the live processes of ``pids`` have used so far."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        except (FileNotFoundError, ProcessLookupError, IndexError):
            pass
    return total / TICKS


# -- the API as its own process ------------------------------------------------------------


class Api:
    """``python -m cloudland_api`` on a database, and an HTTP client logged in as the bootstrap admin."""

    def __init__(self, state_dir: Path, database_url: str, root_endpoint: str, **settings: str) -> None:
        self.state_dir = state_dir
        self.port = free_port()
        env = dict(os.environ)
        env.update({
            "CLOUDLAND_API_ROOT_ENDPOINT": root_endpoint,
            "CLOUDLAND_API_STATE_DIR": str(state_dir),
            "CLOUDLAND_API_DATABASE_URL": database_url,
            "CLOUDLAND_API_PORT": str(self.port),
            **{f"CLOUDLAND_API_{k.upper()}": v for k, v in settings.items()},
        })
        state_dir.mkdir(parents=True, exist_ok=True)
        with open(state_dir / "api.out", "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "cloudland_api"], env=env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.base = f"http://127.0.0.1:{self.port}"
        self.http: httpx.Client | None = None
        self.token: str | None = None
        try:
            wait_for(self._answers, 60, "the API to answer")
            fields = dict(line.split("=", 1) for line in (state_dir / ADMIN_CREDENTIALS_FILE).read_text().split())
            self.http = self.client()
            token = self.http.post("/login", json={"username": fields["username"], "password": fields["password"]})
            assert token.status_code == 200, token.text
            self.token = token.json()["token"]
            self.http.headers["Authorization"] = f"Bearer {self.token}"
        except BaseException:
            self.stop()
            raise

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            log = (self.state_dir / "api.out").read_text(errors="replace")
            raise RuntimeError(f"the API exited with {self.proc.returncode}:\n{log[-3000:]}")
        try:
            return httpx.get(f"{self.base}/openapi.json", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def client(self) -> httpx.Client:
        """A new keep-alive client, logged in once ``self.token`` exists."""
        client = httpx.Client(base_url=self.base + API, timeout=120)
        if self.token:
            client.headers["Authorization"] = f"Bearer {self.token}"
        return client

    def call(self, method: str, path: str, body: Any = None, http: httpx.Client | None = None, **params: Any) -> Any:
        reply = (http or self.http).request(method, path, json=body,  # type: ignore[union-attr]
                                            params={k: v for k, v in params.items() if v is not None})
        assert reply.status_code < 300, f"{method} {path}: {reply.status_code} {reply.text[:500]}"
        return reply.json() if reply.content else None

    def counts(self, batch: str) -> Counter[str]:
        return Counter(self.call("GET", "/jobs", batch=batch, limit=1)["counts"])

    def wait_batches(self, batches: list[str], total: int, timeout: float = 300, every: float = 0.05) -> Counter[str]:
        """Job counts per state (summed over ``batches``) once all ``total`` jobs are terminal."""
        end = time.monotonic() + timeout
        pending = list(batches)
        done: Counter[str] = Counter()
        while True:
            for batch in list(pending):
                counts = self.counts(batch)
                if sum(counts[s] for s in TERMINAL) == sum(counts.values()):
                    done += counts
                    pending.remove(batch)
            if not pending:
                assert sum(done[s] for s in TERMINAL) == total, (done, total)
                return done
            if time.monotonic() > end:
                raise AssertionError(f"timed out: {len(pending)} of {len(batches)} batches unfinished")
            time.sleep(every)

    def stop(self) -> None:
        if self.http is not None:
            self.http.close()
            self.http = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


# -- creates: the raw driver, then through REST and the tree -------------------------------


def libvirt_baseline(count: int, workdir: Path) -> dict[str, float]:
    """Define+start rate on one test:/// host, single-threaded: bare (domain_xml) and the agent's driver."""
    rates = {}
    for how in ("domain_xml", "driver"):
        hypervisor = open_simulated(0, workdir / how)
        driver = LibvirtCompute(hypervisor.conn, hypervisor.id)
        specs = [DomainSpec(name=f"cl-{u}", uuid=u, vcpus=1, memory_mib=64,
                            metadata={"instance_id": str(i), "org_id": "1", "name": f"vm-{i}", "image_id": "1"})
                 for i, u in enumerate(str(uuid.uuid4()) for _ in range(count))]
        t0 = time.perf_counter()
        for spec in specs:
            if how == "driver":
                driver.create(spec)
            else:
                hypervisor.conn.defineXML(domain_xml(spec)).create()
        rates[how] = count / (time.perf_counter() - t0)
        assert len(hypervisor.conn.listAllDomains()) == count
        hypervisor.close()
    return rates


def tree_only(tree: Tree, count: int, workers: int, hypervisors: int) -> list[dict[str, Any]]:
    """``vm.create`` then ``vm.delete`` of ``count`` VMs straight through the root, as the dispatcher's
    senders do it (one blocking unicast Dispatch per VM, ``workers`` threads) but with no API or database."""
    specs = [{"name": f"cl-{u}", "uuid": u, "vcpus": 1, "memory_mib": 64, "arch": "x86_64",
              "metadata": {"instance_id": str(i), "org_id": "1", "name": f"t-{i}", "image_id": "1"}}
             for i, u in enumerate(str(uuid.uuid4()) for _ in range(count))]
    rows = []
    for operation in ("vm.create", "vm.delete"):
        def one(i: int, operation: str = operation) -> bool:
            args = {"spec": specs[i]} if operation == "vm.create" else {"name": specs[i]["name"]}
            [reply] = tree.client.run(operation, i % hypervisors, request=operations.parse(operation, args), timeout=60)
            return reply.status == pb.OK

        ranks = tree_pids(tree)
        cpu0 = (cpu_seconds([os.getpid()]), cpu_seconds(ranks))
        t0 = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            ok = sum(pool.map(one, range(count)))
        elapsed = time.perf_counter() - t0
        cpu1 = (cpu_seconds([os.getpid()]), cpu_seconds(ranks))
        rows.append({"what": f"{operation.split('.')[1]}, tree only: {workers} threads of unicast Dispatch, no API",
                     "jobs": count, "succeeded": ok, "failed": count - ok, "seconds": elapsed, "rate": count / elapsed,
                     "accepted_s": float("nan"), "post_max_s": float("nan"),
                     "api_cpu_s": cpu1[0] - cpu0[0], "tree_cpu_s": cpu1[1] - cpu0[1]})
    return rows


def tree_pids(tree: Tree) -> list[int]:
    tree.peers()  # records every rank's pid in seen_pids
    return [tree.proc.pid, *tree.seen_pids]


def timed_run(api: Api, tree: Tree, posts: list[dict[str, Any]], path: str = "/instances") -> dict[str, Any]:
    """Send ``posts`` concurrently (one client each); the figures once every job of them is terminal."""
    clients = [api.client() for _ in posts]
    for c in clients:  # connect first: the timed part starts with the requests
        c.get("/flavors", params={"limit": 1})
    results: list[Any] = [None] * len(posts)
    post_s: list[float] = [0.0] * len(posts)
    go = threading.Barrier(len(posts) + 1)

    def send(i: int) -> None:
        go.wait()
        t = time.perf_counter()
        results[i] = api.call("POST", path, posts[i], http=clients[i])
        post_s[i] = time.perf_counter() - t

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(posts))]
    for t in threads:
        t.start()
    api_pids, ranks = [api.proc.pid], tree_pids(tree)
    cpu0 = (cpu_seconds(api_pids), cpu_seconds(ranks))
    go.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    accepted_s = time.perf_counter() - t0
    total = sum(len(r["jobs"]) for r in results)
    counts = api.wait_batches([r["batch"] for r in results], total)
    elapsed = time.perf_counter() - t0
    cpu1 = (cpu_seconds(api_pids), cpu_seconds(ranks))
    for c in clients:
        c.close()
    return {
        "jobs": total, "succeeded": counts["succeeded"], "failed": counts["failed"] + counts["timeout"],
        "seconds": elapsed, "rate": total / elapsed, "post_max_s": max(post_s), "accepted_s": accepted_s,
        "api_cpu_s": cpu1[0] - cpu0[0], "tree_cpu_s": cpu1[1] - cpu0[1],
        "ids": [i["id"] for r in results for i in r["instances"]],
    }


def ready_to_create(api: Api, hypervisors: int) -> None:
    """Every hypervisor up in the API, a flavor ``tiny`` and a raw image ``raw``: what a create needs."""
    wait_for(lambda: sum(h["state"] == "up" for h in api.call("GET", "/hypervisors", limit=500)["items"])
             == hypervisors, 60, "every hypervisor up in the API")
    api.call("POST", "/flavors", {"name": "tiny", "vcpus": 1, "memory_mib": 64, "disk_gib": 1})
    image = api.call("POST", "/images", {"name": "raw", "disk_format": "raw"})
    reply = api.http.put(f"/images/{image['id']}/file", content=b"\0" * 4096,  # type: ignore[union-attr]
                         headers={"Content-Type": "application/octet-stream"})
    assert reply.status_code == 200, reply.text


def measure_creates(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    per_leaf = TreeSettings(hypervisors=args.hypervisors, fanout=32).shape.per_leaf  # as tree_bench.py
    print(f"… libvirt baseline: {args.baseline} define+start on one test:/// host", file=sys.stderr, flush=True)
    base = libvirt_baseline(args.baseline, workdir / "baseline")
    print(f"… tree of {args.hypervisors} hypervisors ({per_leaf} per leaf), API on SQLite", file=sys.stderr,
          flush=True)
    tree = start_tree(workdir / "tree", args.hypervisors, per_leaf, 32, 1.0)
    os.environ["CLOUDLAND_PKI"] = str(tree.pki_dir)  # the API and any client present its control certificate
    api = None
    try:
        api = Api(workdir / "api", f"sqlite:///{workdir / 'api' / 'cloudland.db'}", tree.endpoint)
        ready_to_create(api, args.hypervisors)
        spec = {"flavor": "tiny", "image": "raw"}
        warm = timed_run(api, tree, [spec | {"name": "warm", "count": 50}])  # connections, caches, sender threads
        rows, ids = [], list(warm["ids"])
        runs = [(f"1 request × {args.creates}", [spec | {"name": "bulk", "count": args.creates}])]
        if args.concurrent:
            each = args.creates // args.concurrent
            runs.append((f"{args.concurrent} concurrent × {each}",
                         [spec | {"name": f"c{i}", "count": each} for i in range(args.concurrent)]))
        for label, posts in runs:
            print(f"… creates: {label}", file=sys.stderr, flush=True)
            row = timed_run(api, tree, posts)
            ids += row.pop("ids")
            rows.append({"what": f"create, {label}", **row})
        print(f"… deletes: {len(ids)} in requests of 1,000", file=sys.stderr, flush=True)
        chunks = [ids[i:i + 1000] for i in range(0, len(ids), 1000)]
        row = timed_run(api, tree, [{"action": "delete", "ids": chunk} for chunk in chunks], "/instances/actions")
        row.pop("ids")
        rows.append({"what": f"delete, {len(chunks)} concurrent × ≤1,000", **row})
        left = api.call("GET", "/instances", limit=1)["items"]
        assert not left, f"instances left after the deletes: {left}"
        api.stop()  # the tree to itself: its dispatcher and reconciler idle, but they would still poll
        workers = ApiSettings().dispatch_workers  # as many sends in flight as the dispatcher has
        print(f"… tree only: {args.creates} creates and deletes from {workers} threads", file=sys.stderr, flush=True)
        rows += tree_only(tree, args.creates, workers, args.hypervisors)
        for row in rows:
            row |= {"baseline_rate": base["domain_xml"], "driver_rate": base["driver"],
                    "hypervisors": args.hypervisors, "per_leaf": per_leaf}
        return rows
    finally:
        if api is not None:
            api.stop()
        stop_tree(tree)


# -- list: 100,000 instances in the database -----------------------------------------------


@contextmanager
def seeding(url: str, state_dir: Path) -> Iterator[tuple[Any, dict[str, int], int, int]]:
    """Migrate ``url``; then a write session in which the admin is bootstrapped with a flavor and
    an image of its organisation: (session, owner, flavor, image), committed when the block ends.
    ``owner`` is the ownership columns of a row in the admin's default project (``org_id``,
    ``project_id``): a bulk insert bypasses the ORM event that fills ``project_id``, and a row
    without one is in no project, so no list shows it."""
    upgrade(url)
    engine = make_engine(url)
    try:
        with session_factory(engine, write=True)() as session:
            bootstrap_admin(session, state_dir)
            org = session.scalar(select(Organisation.id).where(Organisation.name == "admin"))
            owner = {"org_id": org, "project_id": default_project_id(session.connection(), org)}
            flavor = session.scalar(insert(Flavor).returning(Flavor.id),
                                    {"org_id": org, "name": "tiny", "vcpus": 1, "memory_mib": 64, "disk_gib": 1})
            image = session.scalar(insert(Image).returning(Image.id),
                                   {**owner, "name": "raw", "disk_format": "raw", "status": "active",
                                    "size_bytes": 4096})
            yield session, owner, flavor, image
            session.commit()
        if engine.dialect.name == "postgresql":
            # What autovacuum does soon after a bulk load. Without it the planner still thinks the
            # table is nearly empty and sorts every row past ``after`` (9 ms) instead of walking the
            # primary key (0.05 ms): the first minute after a load, not the steady state.
            with engine.begin() as connection:
                connection.exec_driver_sql("ANALYZE")
    finally:
        engine.dispose()


def seed(url: str, state_dir: Path, rows: int, hypervisors: int = 8) -> float:
    """Migrate, bootstrap the admin, and bulk-insert ``rows`` instances of its organisation; seconds taken."""
    t0 = time.perf_counter()
    with seeding(url, state_dir) as (session, owner, flavor, image):
        now = datetime.now(UTC)
        session.execute(insert(Hypervisor), [
            {"id": h, "hostname": f"sim-{h:05d}", "cpus": 64, "memory_mib": 256 * 1024,
             "free_memory_mib": 128 * 1024, "state": "up", "vcpus_claimed": 0, "memory_claimed_mib": 0,
             "last_seen": now} for h in range(hypervisors)])
        statuses = ["running"] * 8 + ["stopped", "error"]
        for start in range(1, rows + 1, 10_000):
            session.execute(insert(Instance), [
                {**owner, "name": f"vm-{i}", "uuid": str(uuid.uuid4()), "flavor_id": flavor,
                 "image_id": image, "vcpus": 1, "memory_mib": 64, "disk_gib": 1,
                 "hypervisor_id": i % hypervisors, "status": statuses[i % len(statuses)],
                 "created_at": now, "updated_at": now}
                for i in range(start, min(rows, start + 9_999) + 1)])
    return time.perf_counter() - t0


def timed_gets(api: Api, count: int, rows: int, rng: random.Random, **params: Any) -> list[float]:
    """``count`` sequential list requests after random ids (the cursor of a page ending there); seconds each."""
    assert api.http is not None
    samples = []
    for _ in range(count):
        after = rng.randrange(1, rows)
        query = {"limit": 100, "after": encode_cursor([after]), **params}
        t0 = time.perf_counter()
        reply = api.http.get("/instances", params=query)
        samples.append(time.perf_counter() - t0)
        assert reply.status_code == 200, reply.text
        assert params or after > rows - 101 or len(reply.json()["items"]) == 100
    return samples


def measure_list(backend: str, url: str, args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    print(f"… list: seeding {args.rows:,} instances ({backend})", file=sys.stderr, flush=True)
    seed_s = seed(url, workdir, args.rows)
    api = Api(workdir, url, "")  # no tree: nothing is dispatched, nothing reconciles
    try:
        rng = random.Random(1)
        timed_gets(api, 50, args.rows, rng)  # warm-up: the page cache, the connection pool
        queries = [("limit=100, random after", {}, args.gets),
                   ("limit=100, random after, name=vm-1*", {"name": "vm-1*"}, args.gets // 5),
                   ("limit=100, random after, name=vm-4*7", {"name": "vm-4*7"}, args.gets // 5)]
        rows = []
        for label, params, count in queries:
            cpu0 = cpu_seconds([api.proc.pid])
            samples = timed_gets(api, count, args.rows, rng, **params)
            cpu_ms = (cpu_seconds([api.proc.pid]) - cpu0) / count * 1e3
            rows.append({"backend": backend, "what": label, "requests": count, "rows": args.rows,
                         "seed_s": seed_s, "median_ms": statistics.median(samples) * 1e3,
                         "p99_ms": percentile(samples, 0.99) * 1e3, "max_ms": max(samples) * 1e3,
                         "api_cpu_ms": cpu_ms})
        return rows
    finally:
        api.stop()


@contextmanager
def postgres(workdir: Path) -> Iterator[str]:
    """A database on a throwaway PostgreSQL 15 (tests/conftest.py), removed afterwards."""
    sys.path.insert(0, str(REPO))  # run from anywhere: tests/ is a package of the repository
    from tests.conftest import PostgresServer, _free_port, postgres_missing

    reason = postgres_missing()
    if reason is not None:
        raise SystemExit(f"--postgres: {reason}")
    # Not under workdir: the server runs as "postgres" and needs its own 0700 directory.
    server = PostgresServer(Path(tempfile.mkdtemp(prefix="cloudland-bench-pg-")), _free_port())
    try:
        server.start()
        with server.database() as url:
            yield url
    finally:
        server.stop()


# -- report --------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("creates", "list"), help="run one half only")
    parser.add_argument("--hypervisors", type=int, default=100)
    parser.add_argument("--creates", type=int, default=1000, help="VMs per create run (at most 1,000 per request)")
    parser.add_argument("--concurrent", type=int, default=10, help="requests of the concurrent run; 0: skip it")
    parser.add_argument("--baseline", type=int, default=2000, help="domains in the libvirt baseline")
    parser.add_argument("--rows", type=int, default=100_000, help="instances in the database for the list run")
    parser.add_argument("--gets", type=int, default=1000, help="requests of the unfiltered list run")
    parser.add_argument("--postgres", action="store_true", help="run the list half on PostgreSQL 15 too")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    creates: list[dict[str, Any]] = []
    lists: list[dict[str, Any]] = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="cloudland-bench-") as tmp:
        if args.only in (None, "creates"):
            creates = measure_creates(args, Path(tmp) / "creates")
        if args.only in (None, "list"):
            lists += measure_list("SQLite", f"sqlite:///{Path(tmp) / 'list' / 'cloudland.db'}", args,
                                  Path(tmp) / "list")
            if args.postgres:
                with postgres(Path(tmp)) as url:
                    lists += measure_list("PostgreSQL 15", url, args, Path(tmp) / "list-pg")
    if creates:
        r0 = creates[0]
        print(f"\nlibvirt test:/// baseline, one thread, one host: {r0['baseline_rate']:,.0f} define+start/s "
              f"(domain_xml), {r0['driver_rate']:,.0f}/s (LibvirtCompute.create)")
        print(f"\n{r0['hypervisors']} hypervisors ({r0['per_leaf']} per leaf rank), fan-out 32, API on SQLite:\n")
        print("| run | jobs (failed) | all 202s after s | all terminal after s | VMs/s | vs libvirt baseline "
              "| CPU s: API (tree only: client) / tree ranks |")
        print("|---|---|---|---|---|---|---|")
        for r in creates:
            accepted = "–" if r["accepted_s"] != r["accepted_s"] else f"{r['accepted_s']:.2f}"  # NaN: no API
            print(f"| {r['what']} | {r['jobs']:,} ({r['failed']}) | {accepted} | {r['seconds']:.2f} "
                  f"| **{r['rate']:,.0f}** | {r['rate'] / r['baseline_rate']:.3f}× "
                  f"| {r['api_cpu_s']:.1f} / {r['tree_cpu_s']:.1f} |")
    if lists:
        print(f"\nGET /api/v1/instances with {lists[0]['rows']:,} instances, sequential, one keep-alive connection:\n")
        print("| database | query | requests | median ms | p99 ms | max ms | API CPU ms per request |")
        print("|---|---|---|---|---|---|---|")
        for r in lists:
            print(f"| {r['backend']} | {r['what']} | {r['requests']:,} | {r['median_ms']:.1f} "
                  f"| **{r['p99_ms']:.1f}** | {r['max_ms']:.1f} | {r['api_cpu_ms']:.1f} |")
        for backend in dict.fromkeys(r["backend"] for r in lists):
            print(f"{backend}: {lists[0]['rows']:,} instances seeded in "
                  f"{next(r['seed_s'] for r in lists if r['backend'] == backend):.1f} s")
    # The figures are only as good as the machine was quiet: say how busy it was.
    print(f"\nload average (1 min) {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, "
          f"on {os.cpu_count()} CPUs")
    if args.json:
        args.json.write_text(json.dumps({"creates": creates, "list": lists}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
