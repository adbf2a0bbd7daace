"""A whole cloud for integration tests: a real tree, and the REST API as its own process on it.

The API is ``python -m cloudland_api``, as ``cloudland up`` starts it, so a test can
``kill -9`` it and start it again on the same database. Tests talk to it over real HTTP.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx

from cloudland import operations
from cloudland_launcher.harness import Tree, free_port, start_tree, stop_tree, wait_for
from cloudland_proto.v1 import envelope_pb2 as pb

API = "/api/v1"
TERMINAL = ("succeeded", "failed", "timeout")


def wait_serving(base: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    """Until the API process ``proc`` at ``base`` answers HTTP; fails at once, with the end of its
    ``log``, if it exits. It asks for ``/docs`` (a few lines of HTML) on one client: not for
    ``/openapi.json``, whose first answer builds the schema (about 1 s of CPU on this machine), which
    a poll's 1 s limit then abandoned and asked for again; and not on a new client per poll, which
    loads the CA bundle each time."""
    with httpx.Client(timeout=10) as probe:

        def answers() -> bool:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:]
                raise AssertionError(f"the API exited with {proc.returncode}:\n{tail}")
            try:
                return probe.get(f"{base}/docs").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(answers, timeout, f"the API at {base} to answer")


def every_instance(get: Any, **filters: Any) -> list[dict[str, Any]]:
    """Every page of ``GET /instances`` (``get(path, **params)``: a cloud's JSON GET)."""
    items: list[dict[str, Any]] = []
    after = None
    while True:
        page = get("/instances", limit=500, after=after, **filters)
        items += page["items"]
        after = page["next_after"]
        if after is None:
            return items


@dataclass
class Cloud:
    """The tree, the API process and an HTTP client logged in as the bootstrap admin."""

    tree: Tree
    state_dir: Path
    database_url: str
    settings: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    http: httpx.Client | None = None

    @classmethod
    def on(cls, tree: Tree, state_dir: Path, database_url: str | None = None, **settings: str) -> Cloud:
        """The cloud of ``tree``, its API not started yet: its state in ``state_dir``, on
        ``database_url`` (default: a SQLite file there), ``settings`` as CLOUDLAND_API_<NAME>."""
        url = database_url or f"sqlite:///{state_dir / 'cloudland.db'}"
        return cls(tree, state_dir, url, {f"CLOUDLAND_API_{k.upper()}": str(v) for k, v in settings.items()})

    # -- the API process --------------------------------------------------------------------

    def start_api(self) -> None:
        """Start (or restart) the API and log in; returns once it answers."""
        self.port = self.port or free_port()
        env = dict(os.environ)
        env.update({
            "CLOUDLAND_API_ROOT_ENDPOINT": self.tree.endpoint,
            "CLOUDLAND_API_STATE_DIR": str(self.state_dir),
            "CLOUDLAND_API_DATABASE_URL": self.database_url,
            "CLOUDLAND_API_PORT": str(self.port),
            **({"CLOUDLAND_PKI": str(self.tree.pki_dir)} if self.tree.pki_dir else {}),  # its control certificate
            **self.settings,
        })
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / "api.out", "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "cloudland_api"], env=env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{self.port}"
        wait_serving(base, self.proc, self.state_dir / "api.out")
        fields = dict(line.split("=", 1) for line in (self.state_dir / "admin-credentials").read_text().split())
        if self.http is not None:
            self.http.close()
        self.http = httpx.Client(base_url=base + API, timeout=60)
        token = self.post("/login", {"username": fields["username"], "password": fields["password"]})
        self.http.headers["Authorization"] = f"Bearer {token['token']}"

    def kill_api(self) -> None:
        """SIGKILL the API: no shutdown code runs, as in a crash."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop_api(self) -> None:
        if self.http is not None:
            self.http.close()
            self.http = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill_api()

    def log(self) -> str:
        path = self.state_dir / "api.out"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- HTTP -------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        assert self.http is not None
        reply = self.http.request(method, path, json=body, params={k: v for k, v in params.items() if v is not None})
        assert reply.status_code < 300, f"{method} {path}: {reply.status_code} {reply.text}"
        return reply.json() if reply.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, **params)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body)

    def patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, body)

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``cloudland ARGS...`` as its own process, logged in as the admin, stdin not a terminal."""
        assert self.http is not None
        env = dict(os.environ, CLOUDLAND_ENDPOINT=f"http://127.0.0.1:{self.port}", COLUMNS="200",
                   CLOUDLAND_TOKEN=self.http.headers["Authorization"].split()[1],
                   CLOUDLAND_CONFIG=str(self.state_dir / "cli.json"))
        return subprocess.run([str(Path(sys.executable).parent / "cloudland"), *args], env=env,
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    # -- what tests need again and again ----------------------------------------------------

    def bootstrap(self, vcpus: int = 1, memory_mib: int = 64) -> None:
        """A flavor ``small`` and an active raw image ``tiny``."""
        self.post("/flavors", {"name": "small", "vcpus": vcpus, "memory_mib": memory_mib, "disk_gib": 1})
        image = self.post("/images", {"name": "tiny", "disk_format": "raw"})
        assert self.http is not None
        reply = self.http.put(f"/images/{image['id']}/file", content=b"\0" * 4096,
                              headers={"Content-Type": "application/octet-stream"})
        assert reply.status_code == 200, reply.text

    def hypervisors(self) -> list[dict[str, Any]]:
        return list(self.get("/hypervisors", limit=500)["items"])

    def wait_hypervisors(self, count: int) -> list[dict[str, Any]]:
        """The hypervisors once the reconciler has seen all ``count``, every one up."""
        wait_for(lambda: len([h for h in self.hypervisors() if h["state"] == "up"]) == count, 30,
                 f"{count} hypervisors up in the API")
        return self.hypervisors()

    def counts(self, batch: str) -> Counter[str]:
        return Counter(self.get("/jobs", batch=batch, limit=1)["counts"])

    def wait_batch(self, batch: str, total: int, timeout: float = 120) -> Counter[str]:
        """Job counts per state once every job of ``batch`` is terminal."""
        wait_for(lambda: sum(self.counts(batch)[s] for s in TERMINAL) == total, timeout,
                 f"the {total} jobs of batch {batch} to end", every=0.2)
        return self.counts(batch)

    def instances(self, **filters: Any) -> list[dict[str, Any]]:
        return every_instance(self.get, **filters)

    def jobs(self, batch: str, state: str) -> list[dict[str, Any]]:
        return list(self.get("/jobs", batch=batch, state=state, limit=500)["items"])

    def domains(self) -> dict[int, list[dict[str, Any]]]:
        """What libvirt really holds: every hypervisor's domains, asked through the tree."""
        found: dict[int, list[dict[str, Any]]] = {}
        for reply in self.tree.client.run("vm.list", None, timeout=30):
            assert reply.status == pb.OK, reply.error
            found[reply.hypervisor] = operations.as_dict(operations.result_of(reply, "vm.list"))["vms"]
        return found


@contextmanager
def bootstrapped(base: Path, hypervisors: int) -> Iterator[Cloud]:
    """A tree of ``hypervisors`` (one per leaf) in ``base`` and the API on it, bootstrapped
    (flavor ``small``, image ``tiny``), every hypervisor up: for a module whose tests share one
    (each judging only what it made). At the exit the API stops first, then the tree, checked
    for leftover ranks, as ``make_cloud`` does."""
    tree = start_tree(base / "tree", hypervisors, 1, 32, 0.5)
    cloud = Cloud.on(tree, base / "api")
    try:
        cloud.start_api()
        cloud.bootstrap()
        cloud.wait_hypervisors(hypervisors)
        yield cloud
    finally:
        cloud.stop_api()
        stop_tree(tree)
