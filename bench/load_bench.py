"""Throughput of the REST API under concurrency, beside a bare FastAPI app in the same run (issue 15).

mixed     ``--requests`` requests from ``--concurrency`` clients at once (asyncio, one keep-alive
          connection each), to the API as ``cloudland up`` runs it (``python -m cloudland_api``,
          SQLite) on a real tree of ``--hypervisors`` simulated hypervisors, seeded with
          ``--seed`` running VMs. The mix, by weight: 40 ``GET /instances?limit=20``, 20
          ``GET /instances/{id}``, 15 ``GET /flavors``, 10 ``GET /jobs?limit=20``, 10
          ``POST /instances`` (one VM, a job through the tree), 5 ``POST /ssh-keys``.
baseline  the same clients and count against a bare FastAPI app under uvicorn with the same
          settings as the API (``--serve-bare``: this file serves it), one GET route that
          returns 20 small records and one POST route that echoes its body, in the same mix
          of reads and writes. The ceiling of the stack itself on this machine.

Per run: requests/s, p50 and p99 latency as the client sees them, errors (any status >= 400 or
transport error, by kind), CPU seconds of the server process and of this client; the API's
RSS before and after. The load average is printed: on a shared 2-core machine it moves the
figures more than anything else, and the client shares the cores with the server. Goal
(issue 15, must show 6): >= 500 requests/s at concurrency 100 with p99 <= 250 ms and 0 errors.

    .venv/bin/python bench/load_bench.py [--requests 5000] [--concurrency 100] [--hypervisors 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx2 as httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_bench import Api, cpu_seconds, percentile, ready_to_create  # noqa: E402 - bench/ is not a package

from cloudland import procinfo  # noqa: E402
from cloudland.config import TreeSettings  # noqa: E402
from cloudland_launcher.harness import free_port, start_tree, stop_tree, wait_for  # noqa: E402

ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl bench@cloudland"
MIX = (("list", 40), ("show", 20), ("flavors", 15), ("jobs", 10), ("create", 10), ("key", 5))
BARE_MIX = (("read", 85), ("write", 15))


# -- the baseline: a bare FastAPI app -------------------------------------------------------


def serve_bare(port: int) -> None:
    """A FastAPI app with nothing of ours, under uvicorn as api/__main__.py runs it."""
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()
    records = [{"id": i, "name": f"vm-{i}", "status": "running", "vcpus": 1} for i in range(20)]

    @app.get("/items")
    def items() -> dict[str, Any]:
        return {"items": records, "limit": 20, "next_after": None}

    @app.post("/items")
    def echo(body: dict[str, Any]) -> dict[str, Any]:
        return body

    uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")).run()


def start_bare() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve-bare", str(port)], start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return httpx.get(f"{base}/items", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(answers, 60, "the bare app to answer")
    return proc, base


# -- the load -------------------------------------------------------------------------------


def plan(count: int, mix: tuple[tuple[str, int], ...], seed: int = 15) -> list[str]:
    rng = random.Random(seed)
    kinds, weights = zip(*mix, strict=True)
    return rng.choices(kinds, weights, k=count)


async def run_load(base: str, headers: dict[str, str], requests: list[str], concurrency: int,
                   request_of: Any) -> dict[str, Any]:
    """Send ``requests`` from ``concurrency`` workers; latencies and errors as the client sees them."""
    queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
    for n, kind in enumerate(requests):
        queue.put_nowait((n, kind))
    latencies: list[float] = []
    errors: Counter[str] = Counter()

    async def worker() -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60, limits=limits) as client:
            while True:
                try:
                    n, kind = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                method, path, body = request_of(n, kind)
                started = time.perf_counter()
                try:
                    reply = await client.request(method, path, json=body)
                    if reply.status_code >= 400:
                        errors[f"{kind} {reply.status_code}"] += 1
                except httpx.TransportError as exc:
                    errors[f"{kind} {type(exc).__name__}"] += 1
                latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {"requests": len(requests), "seconds": elapsed, "rate": len(requests) / elapsed,
            "p50_ms": percentile(latencies, 0.50) * 1000, "p99_ms": percentile(latencies, 0.99) * 1000,
            "max_ms": max(latencies) * 1000, "errors": errors}


def measured(pid: int, base: str, headers: dict[str, str], requests: list[str], concurrency: int,
             request_of: Any) -> dict[str, Any]:
    server0, client0 = cpu_seconds([pid]), cpu_seconds([os.getpid()])
    result = asyncio.run(run_load(base, headers, requests, concurrency, request_of))
    result["server_cpu_s"] = cpu_seconds([pid]) - server0
    result["client_cpu_s"] = cpu_seconds([os.getpid()]) - client0
    return result


def by_kind(api: Api, ids: list[int], count: int, concurrency: int,
            kinds: tuple[str, ...] = tuple(kind for kind, _ in MIX)) -> list[tuple[str, float, float]]:
    """The API's CPU per request of each kind of the mix alone: (kind, ms per request, req/s).

    ``count`` requests of one kind at ``concurrency``, then the API is left to finish the work they
    started (the job engine, the observer and the converger settle creates after their answer)
    until a 1 s window uses no more than it does idle; that idle rate is subtracted."""
    pid = api.proc.pid

    def rate_over(seconds: float) -> float:
        before = cpu_seconds([pid])
        time.sleep(seconds)
        return (cpu_seconds([pid]) - before) / seconds

    idle = rate_over(2.0)
    rows = []
    headers = {"Authorization": f"Bearer {api.token}"}
    for n, (kind, _weight) in enumerate(MIX):
        if kind not in kinds:
            continue
        started, cpu0 = time.monotonic(), cpu_seconds([pid])
        request_of = api_requests(ids)
        result = asyncio.run(run_load(api.base, headers, [kind] * count, concurrency,
                                      lambda i, k: request_of(i + (n + 1) * 1_000_000, k)))
        for _ in range(30):  # settle: at most 30 s
            if rate_over(1.0) <= idle * 1.5 + 0.02:
                break
        spent = cpu_seconds([pid]) - cpu0 - idle * (time.monotonic() - started)
        assert not result["errors"], (kind, result["errors"])
        rows.append((kind, spent * 1000 / count, result["rate"]))
    return rows


def bare_request(n: int, kind: str) -> tuple[str, str, Any]:
    return ("GET", "/items", None) if kind == "read" else ("POST", "/items", {"name": f"w{n}", "count": 1})


def api_requests(ids: list[int]) -> Any:
    rng = random.Random(16)

    def request_of(n: int, kind: str) -> tuple[str, str, Any]:
        if kind == "list":
            return "GET", "/api/v1/instances?limit=20", None
        if kind == "show":
            return "GET", f"/api/v1/instances/{rng.choice(ids)}", None
        if kind == "flavors":
            return "GET", "/api/v1/flavors", None
        if kind == "jobs":
            return "GET", "/api/v1/jobs?limit=20", None
        if kind == "create":
            return "POST", "/api/v1/instances", {"name": f"load-{n}", "flavor": "tiny", "image": "raw"}
        return "POST", "/api/v1/ssh-keys", {"name": f"key-{n}", "public_key": ED25519}
    return request_of


# -- memory (must show 6) -------------------------------------------------------------------


def measure_memory(api: Api, creates: int) -> list[tuple[str, int]]:
    """The API's RSS before and after ``creates`` VMs (requests of 1,000, every job ended), then
    after four 50 MB bodies to the unauthenticated /login (each refused: 413 or cut off)."""
    rss = [("before", procinfo.memory_kib(api.proc.pid)[0])]
    print(f"… the API's memory: {creates} creates, then four 50 MB bodies", file=sys.stderr)
    batches = [api.call("POST", "/instances", {"name": f"mem-{n}", "flavor": "tiny", "image": "raw",
                                                "count": min(1000, creates - n)})["batch"]
               for n in range(0, creates, 1000)]
    counts = api.wait_batches(batches, creates, timeout=1800, every=1.0)
    rss.append((f"after {creates:,} creates ({counts['succeeded']:,} succeeded)", procinfo.memory_kib(api.proc.pid)[0]))
    body = b"x" * (50 * 2**20)
    with httpx.Client(base_url=api.base, timeout=120) as client:
        for _ in range(4):
            try:
                client.post("/api/v1/login", content=body, headers={"Content-Type": "application/json"})
            except httpx.TransportError:
                pass  # the API may close before all of it was sent: refused either way
    rss.append(("after four 50 MB bodies", procinfo.memory_kib(api.proc.pid)[0]))
    return rss


# -- the run --------------------------------------------------------------------------------


def row(name: str, r: dict[str, Any]) -> str:
    errors = sum(r["errors"].values())
    shown = ", ".join(f"{n} × {k}" for k, n in r["errors"].most_common(3))
    return (f"| {name} | {r['requests']:,} | {r['rate']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{r['max_ms']:.0f} | {errors}{f' ({shown})' if shown else ''} | {r['server_cpu_s']:.1f} / "
            f"{r['client_cpu_s']:.1f} | {r['server_cpu_s'] * 1000 / r['requests']:.2f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--hypervisors", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1000, help="running VMs made before the load")
    parser.add_argument("--memory-creates", type=int, default=10_000, metavar="N",
                        help="after the load: the API's RSS before and after creating N VMs (in requests of "
                             "1,000), then after four 50 MB bodies to /login (0: skip)")
    parser.add_argument("--profile", metavar="FILE", type=Path,
                        help="sample the API with py-spy during the load: collapsed stacks into FILE")
    parser.add_argument("--by-kind", type=int, default=0, metavar="N",
                        help="before the mixed load: N requests of each kind alone, the API's CPU per request "
                             "of each (creates include the work their jobs cause after the answer)")
    parser.add_argument("--kinds", default=",".join(kind for kind, _ in MIX),
                        help="with --by-kind: only these kinds, comma-separated (list,show,flavors,jobs,create,key)")
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return 0
    load0 = os.getloadavg()[0]
    print(f"… bare FastAPI app, {args.requests} requests at concurrency {args.concurrency}", file=sys.stderr)
    bare, base = start_bare()
    try:
        baseline = measured(bare.pid, base, {}, plan(args.requests, BARE_MIX), args.concurrency, bare_request)
    finally:
        bare.terminate()
        bare.wait(timeout=20)
    workdir = Path(tempfile.mkdtemp(prefix="cloudland-load-bench-"))
    per_leaf = TreeSettings(hypervisors=args.hypervisors, fanout=32).shape.per_leaf
    print(f"… tree of {args.hypervisors} hypervisors, API on SQLite, {args.seed} VMs seeded", file=sys.stderr)
    tree = start_tree(workdir / "tree", args.hypervisors, per_leaf, 32, 1.0)
    os.environ["CLOUDLAND_PKI"] = str(tree.pki_dir)
    api = None
    try:
        # Overcommit so that the memory phase's VMs fit on the simulated hypervisors (test:/// hosts
        # of 16 CPUs and 3 GiB); the mixed load places a few hundred either way.
        api = Api(workdir / "api", f"sqlite:///{workdir / 'api' / 'cloudland.db'}", tree.endpoint,
                  cpu_ratio="64", memory_ratio="64")
        ready_to_create(api, args.hypervisors)
        seeded = api.call("POST", "/instances", {"name": "seed", "flavor": "tiny", "image": "raw", "count": args.seed})
        api.wait_batches([seeded["batch"]], args.seed)
        ids = [i["id"] for i in seeded["instances"]]
        rss0 = procinfo.memory_kib(api.proc.pid)[0]
        headers = {"Authorization": f"Bearer {api.token}"}
        kinds = []
        if args.by_kind:
            print(f"… each kind alone: {args.by_kind} requests at concurrency {args.concurrency}", file=sys.stderr)
            kinds = by_kind(api, ids, args.by_kind, args.concurrency, tuple(args.kinds.split(",")))
        print(f"… the API, {args.requests} mixed requests at concurrency {args.concurrency}", file=sys.stderr)
        spy = None
        if args.profile:
            spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--format", "raw",
                                    "--rate", "200", "--gil", "--nonblocking", "--output", str(args.profile),
                                    "--pid", str(api.proc.pid)], stdout=subprocess.DEVNULL)
            time.sleep(1)  # py-spy attaches
        result = measured(api.proc.pid, api.base, headers, plan(args.requests, MIX), args.concurrency,
                          api_requests(ids))
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            spy.wait(timeout=60)
        rss1 = procinfo.memory_kib(api.proc.pid)[0]
        memory = measure_memory(api, args.memory_creates) if args.memory_creates else []
    finally:
        if api is not None:
            api.stop()
        stop_tree(tree)
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nload average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; "
          f"{os.cpu_count()} cores; API RSS {rss0 / 1024:.0f} MiB before, {rss1 / 1024:.0f} MiB after\n")
    print("| run | requests | **req/s** | p50 ms | **p99 ms** | max ms | errors | CPU s server / client | "
          "server CPU ms per request |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(row("baseline: bare FastAPI + uvicorn, 85 % GET / 15 % POST", baseline))
    print(row(f"the API, mixed (tree of {args.hypervisors}, {args.seed} VMs)", result))
    if kinds:
        weights = dict(MIX)
        whole = len(kinds) == len(MIX)  # the weighted mix only when every kind was measured
        mixed = sum(ms * weights[kind] for kind, ms, _ in kinds) / sum(weights.values())
        print("\n| kind (alone) | " + " | ".join(kind for kind, _, _ in kinds) + (" | mix, weighted |" if whole else " |"))
        print("|---" * (len(kinds) + 1 + whole) + "|")
        print("| API CPU ms per request | " + " | ".join(f"{ms:.2f}" for _, ms, _ in kinds)
              + (f" | {mixed:.2f} |" if whole else " |"))
        print("| req/s | " + " | ".join(f"{rate:.0f}" for _, _, rate in kinds) + (" | |" if whole else " |"))
    if memory:
        print("\n| the API's RSS (MiB) | " + " | ".join(name for name, _ in memory) + " |")
        print("|---" * (len(memory) + 1) + "|")
        print("| | " + " | ".join(f"{kib / 1024:.0f}" for _, kib in memory) + " |")
    goal = result["rate"] >= 500 and result["p99_ms"] <= 250 and not result["errors"]
    print(f"\ngoal (>= 500 req/s, p99 <= 250 ms, 0 errors at concurrency {args.concurrency}): "
          f"{'met' if goal else 'not met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
