"""Where one request's CPU goes inside the API process, layer by layer (issue 15).

The app is driven in this process through ASGI, with no socket and no HTTP parser, on a seeded
SQLite file (no tree: nothing is dispatched). For each kind of request it measures the process's
CPU per request (``time.process_time``: every thread, so the worker threads' share is counted)
through successively fewer layers:

  full        the app as ``create_app`` builds it: Admission, AuditTrail, FastAPI's routing,
              dependency solving (auth, policy, session), the route, the response
  no-mw       the same app without its ASGI middlewares (Admission, AuditTrail)
  route       the route's function called directly with a session and the caller, in the loop's
              thread (the query and the response schema), then FastAPI's serialisation of what it
              returns (``serialize_response``: validation against the response model, JSON)
  query       the service's query alone

and, in the same run, the baselines: the ASGI driver alone (an app that answers a fixed body) and
a bare FastAPI app with one GET route returning 20 small records (load_bench's baseline, minus
uvicorn). The differences between the columns are the layers. uvicorn and httptools are not in
this process's figures: load_bench's bare app through uvicorn, minus ``bare`` here, is their cost.

    .venv/bin/python bench/read_layers.py [--requests 2000] [--concurrency 10] [--rows 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_bench import seed  # noqa: E402 - bench/ is not a package

from cloudland_api.app import create_app  # noqa: E402
from cloudland_api.models import Instance  # noqa: E402
from cloudland_api.security import ADMIN_CREDENTIALS_FILE  # noqa: E402
from cloudland_api.settings import ApiSettings  # noqa: E402

ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl bench@cloudland"
App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


async def call(app: App, method: str, path: str, headers: dict[str, str] | None = None,
               body: Any = None) -> tuple[int, bytes]:
    """One request through ``app`` as uvicorn would hand it over: (status, body)."""
    path, _, query = path.partition("?")
    raw = b"" if body is None else json.dumps(body).encode()
    pairs = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if body is not None:
        pairs += [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": query.encode(), "root_path": "", "headers": pairs,
             "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000), "state": {}}
    sent = False
    status = 0
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await asyncio.Event().wait()  # a disconnect never comes
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


async def fixed(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The driver's baseline: an ASGI app that answers a fixed body at once."""
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b"{}"})


def bare_app() -> Any:
    from fastapi import FastAPI

    app = FastAPI()
    records = [{"id": i, "name": f"vm-{i}", "status": "running", "vcpus": 1} for i in range(20)]

    @app.get("/items")
    def items() -> dict[str, Any]:
        return {"items": records, "limit": 20, "next_after": None}

    return app


async def cpu_per_request(run: Callable[[int], Awaitable[Any]], count: int, concurrency: int) -> float:
    """Process CPU ms per call of ``run(n)``, ``count`` calls at ``concurrency``, after a warm-up."""
    for n in range(min(50, count)):
        await run(n)
    queue = list(range(count))

    async def worker() -> None:
        while queue:
            await run(queue.pop())

    cpu0 = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (time.process_time() - cpu0) * 1000 / count


def without_middleware(settings: ApiSettings) -> Any:
    app = create_app(settings)
    app.user_middleware = []
    return app


async def measure(args: argparse.Namespace, workdir: Path) -> None:
    url = f"sqlite:///{workdir / 'cloudland.db'}"
    seed(url, workdir, args.rows)
    settings = ApiSettings(database_url=url, state_dir=workdir, root_endpoint="")
    app, plain = create_app(settings), without_middleware(settings)
    fields = dict(line.split("=", 1) for line in (workdir / ADMIN_CREDENTIALS_FILE).read_text().split())
    status, body = await call(app, "POST", "/api/v1/login", body={"username": fields["username"],
                                                                   "password": fields["password"]})
    assert status == 200, body
    headers = {"Authorization": f"Bearer {json.loads(body)['token']}"}
    status, body = await call(app, "POST", "/api/v1/instances", headers,
                              {"name": "jobs", "flavor": "tiny", "image": "raw", "count": 30})
    assert status == 202, body
    with app.state.sessions() as session:
        ids = list(session.scalars(select(Instance.id).limit(500)))

    kinds: dict[str, Callable[[int], tuple[str, str, Any]]] = {
        "show": lambda n: ("GET", f"/api/v1/instances/{ids[n % len(ids)]}", None),
        "list": lambda n: ("GET", "/api/v1/instances?limit=20", None),
        "flavors": lambda n: ("GET", "/api/v1/flavors", None),
        "jobs": lambda n: ("GET", "/api/v1/jobs?limit=20", None),
        "key": lambda n: ("POST", "/api/v1/ssh-keys", {"name": f"key-{n}-{time.monotonic_ns()}",
                                                       "public_key": ED25519}),
    }
    for extra in args.also:
        kinds[extra] = lambda n, extra=extra: ("GET", f"/api/v1/{extra}", None)

    def through(target: App, kind: str) -> Callable[[int], Awaitable[Any]]:
        async def run(n: int) -> None:
            method, path, body = kinds[kind](n)
            status, reply = await call(target, method, path, headers, body)
            assert status < 300, (kind, status, reply[:300])
        return run

    if args.only:
        for kind in args.only:  # one kind through the full app, for a profiler
            print(f"{kind}: {await cpu_per_request(through(app, kind), args.requests, args.concurrency):.3f} ms")
        return
    bare = bare_app()
    baselines = {
        "driver (fixed ASGI answer)": await cpu_per_request(lambda n: call(fixed, "GET", "/"), args.requests,
                                                             args.concurrency),
        "bare FastAPI, 20 records": await cpu_per_request(lambda n: call(bare, "GET", "/items"), args.requests,
                                                           args.concurrency),
    }
    print(f"\n{args.requests} requests per cell at concurrency {args.concurrency}, {args.rows} instances; "
          f"load average {os.getloadavg()[0]:.1f}; process CPU ms per request\n")
    for name, ms in baselines.items():
        print(f"baseline: {name}: {ms:.3f}")
    print("\n| kind | full | no middleware |\n|---|---|---|")
    for kind in kinds:
        full = await cpu_per_request(through(app, kind), args.requests, args.concurrency)
        bare_mw = await cpu_per_request(through(plain, kind), args.requests, args.concurrency)
        print(f"| {kind} | {full:.3f} | {bare_mw:.3f} |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--rows", type=int, default=1000, help="instances seeded")
    parser.add_argument("--only", nargs="*", default=[], help="these kinds through the full app only (to profile)")
    parser.add_argument("--also", nargs="*", default=[], help="more GET paths under /api/v1 (ssh-keys, images, ...)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cloudland-read-layers-") as tmp:
        asyncio.run(measure(args, Path(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
