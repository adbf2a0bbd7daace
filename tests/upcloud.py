"""A whole cloud as an operator starts it, ``cloudland up``, for the tests that kill its parts.

``cloudland up`` runs as its own process (its own process group), the tree and the API under
it; tests talk to the API over HTTP, to the root over gRPC (the session's CA), and run the
real CLI. Used by tests/integration/test_supervision.py (must show 3) and tests/chaos/.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx

from cloudland import operations
from cloudland.client import RootClient
from cloudland.errors import RootUnreachable, TreeError
from cloudland_launcher.harness import free_port, wait_for
from cloudland_proto.v1 import envelope_pb2 as pb
from tests.integration.cloud import every_instance

BIN = Path(sys.executable).parent
TERMINAL = ("succeeded", "failed", "timeout")


@dataclass
class UpCloud:
    proc: subprocess.Popen[bytes]
    state_dir: Path
    url: str
    http: httpx.Client
    root: RootClient
    log: Path  # cloudland up's own output
    hypervisors: int

    # -- HTTP and the CLI -------------------------------------------------------------------

    def get(self, path: str, **params: Any) -> Any:
        reply = self.http.get(path, params={k: v for k, v in params.items() if v is not None})
        assert reply.status_code == 200, f"GET {path}: {reply.status_code} {reply.text}"
        return reply.json()

    def post(self, path: str, body: Any) -> Any:
        reply = self.http.post(path, json=body)
        assert reply.status_code < 300, f"POST {path}: {reply.status_code} {reply.text}"
        return reply.json()

    def cli(self, *args: str) -> subprocess.Popen[str]:
        env = dict(os.environ, CLOUDLAND_ENDPOINT=self.url, COLUMNS="200",
                   CLOUDLAND_TOKEN=self.http.headers["Authorization"].split()[1],
                   CLOUDLAND_CONFIG=str(self.state_dir / "cli.json"))
        return subprocess.Popen([str(BIN / "cloudland"), *args], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)

    def answers(self) -> bool:
        try:
            return self.http.get("/flavors", params={"limit": 1}, timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def counts(self, batch: str) -> Counter[str]:
        return Counter(self.get("/jobs", batch=batch, limit=1)["counts"])

    def instances(self, **filters: Any) -> list[dict[str, Any]]:
        return every_instance(self.get, **filters)

    # -- the tree ---------------------------------------------------------------------------

    def tree_whole(self, old_root: int = 0) -> bool:
        """A root other than ``old_root`` answers, and every hypervisor is up under it."""
        try:
            topo = self.root.topology(timeout=1)
            health = self.root.health(timeout=1)
        except (RootUnreachable, TreeError):
            return False
        return topo.ready and health.peers[0].pid != old_root and health.hypervisors_ok == self.hypervisors

    def ranks(self) -> dict[str, pb.PeerStatus]:
        """Every rank below the root by its range, e.g. '3:4' (a leaf) or '0:4' (a relay)."""
        return {f"{p.node.first_leaf}:{p.node.end_leaf}": p for p in self.root.health().peers[1:]}

    def domains(self) -> dict[str, list[tuple[int, str]]]:
        """What libvirt holds: domain name -> (hypervisor, state) of each copy, asked through the tree."""
        where: dict[str, list[tuple[int, str]]] = {}
        for reply in self.root.run("vm.list", None, timeout=60):
            assert reply.status == pb.OK, reply.error
            for vm in operations.as_dict(operations.result_of(reply, "vm.list"))["vms"]:
                where.setdefault(vm["name"], []).append((reply.hypervisor, vm["state"]))
        return where


def start_up(base: Path, hypervisors: int, per_leaf: int, fanout: int = 32, seed: bool = True, **env: str) -> UpCloud:
    """``cloudland up`` in ``base``; returns once it printed its banner, the admin is logged in,
    flavors ``small`` (1 vCPU) and ``medium`` (2) and a raw image ``tiny`` exist (made unless
    ``seed`` is False: a cloud started again), and every hypervisor is up in the API. ``env``:
    more variables for ``up`` (a database URL, a heartbeat)."""
    state_dir = base / "var"
    log = base / "up.out"
    port, grpc = free_port(), f"127.0.0.1:{free_port()}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "cloudland"), "up", "--hypervisors", str(hypervisors), "--per-leaf", str(per_leaf),
             "--fanout", str(fanout), "--grpc", grpc, "--state-dir", str(state_dir),
             "--api-port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, process_group=0,
            env=dict(os.environ, COLUMNS="200", **env))
    root: RootClient | None = None
    try:
        wait_for(lambda: proc.poll() is not None or b"Ctrl-C stops" in log.read_bytes(), 240, "cloudland up's banner")
        assert proc.poll() is None, log.read_text()
        root = RootClient(grpc, Path(os.environ["CLOUDLAND_PKI"]))
        fields = dict(line.split("=", 1) for line in (state_dir / "admin-credentials").read_text().split())
        url = f"http://127.0.0.1:{port}"
        http = httpx.Client(base_url=url + "/api/v1", timeout=60)
        token = http.post("/login", json={"username": fields["username"], "password": fields["password"]})
        http.headers["Authorization"] = f"Bearer {token.json()['token']}"
        cloud = UpCloud(proc, state_dir, url, http, root, log, hypervisors)
        if seed:
            cloud.post("/flavors", {"name": "small", "vcpus": 1, "memory_mib": 64, "disk_gib": 1})
            cloud.post("/flavors", {"name": "medium", "vcpus": 2, "memory_mib": 128, "disk_gib": 1})
            image = cloud.post("/images", {"name": "tiny", "disk_format": "raw"})
            assert http.put(f"/images/{image['id']}/file", content=b"\0" * 4096,
                            headers={"Content-Type": "application/octet-stream"}).status_code == 200
        wait_for(lambda: len([h for h in cloud.get("/hypervisors", limit=500)["items"] if h["state"] == "up"])
                 == hypervisors, 60, "every hypervisor up in the API")
        return cloud
    except BaseException:
        if root is not None:
            root.close()
        _stop(proc, state_dir)
        raise


def stop_up(cloud: UpCloud) -> None:
    """Ctrl-C's way (SIGTERM to up: the API, then the tree); then nothing of the cloud may be left."""
    cloud.http.close()
    cloud.root.close()
    _stop(cloud.proc, cloud.state_dir)


def _stop(proc: subprocess.Popen[bytes], state_dir: Path) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    found = subprocess.run(["pgrep", "-f", str(state_dir)], capture_output=True, text=True).stdout.split()
    if found:  # a part left behind: stop it (it is ours), then say so
        for pid in map(int, found):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        raise AssertionError(f"processes of the cloud left after cloudland up ended: {found}")
