"""A cloud across lab hosts, brought up as an operator would (README, "Running a cluster").

The controller ``ctl`` runs ``cloudland up --hostfile ... --listen ...``: the root, then MPI's
launcher (hydra, through the lab's ssh stand-in) starting one host agent on each host of the
hostfile, then the API. The test process reaches the root's gRPC and the API over the lab's
underlay (``Lab.attach_machine``), as a remote operator would.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx

from cloudland.client import RootClient
from cloudland_lab import Lab
from cloudland_launcher.harness import Tree, wait_for
from cloudland_proto.v1 import envelope_pb2 as pb
from tests.integration.cloud import API, Cloud

BIN = Path(sys.executable).parent
ROOT_PORT, GRPC_PORT, API_PORT = 7100, 7101, 7102
HEARTBEAT_S = 0.5          # lost after 10 beats: 5 s
STATE_BASE = Path("/var/tmp")  # not /tmp: every lab host has its own


@dataclass
class LabCloud:
    lab: Lab
    hosts: list[str]
    state_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    client: RootClient | None = None
    cloud: Cloud | None = None
    env: dict[str, str] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)  # more CLOUDLAND_* for the cluster

    @property
    def ctl(self) -> str:
        return self.lab.address("ctl")

    @property
    def grpc(self) -> str:
        return f"{self.ctl}:{GRPC_PORT}"

    def start(self, hypervisors: int, per_leaf: int, fanout: int) -> None:
        self.lab.attach_machine()
        shutil.rmtree(self.state_dir, ignore_errors=True)
        self.state_dir.mkdir(parents=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDLAND_")}
        self.env.update({"CLOUDLAND_HEARTBEAT_S": str(HEARTBEAT_S),
                         "CLOUDLAND_LOG_LEVEL": "WARNING", "COLUMNS": "200",
                         "CLOUDLAND_TEST_OPS": "1",  # `sleep`: a command in flight while a rank dies
                         # The cluster's own CA, made by its root; every host reads it at this path.
                         "CLOUDLAND_PKI": str(self.state_dir / "pki")})
        self.env.update(self.settings)
        hostfile = self.lab.hostfile(self.hosts)
        argv = [str(BIN / "cloudland"), "up", "--hostfile", str(hostfile), "--listen", f"{self.ctl}:{ROOT_PORT}",
                "--grpc", self.grpc, "--api-host", self.ctl, "--api-port", str(API_PORT),
                "--hypervisors", str(hypervisors), "--per-leaf", str(per_leaf), "--fanout", str(fanout),
                "--state-dir", str(self.state_dir), "--launcher-exec", str(self.lab.ssh)]
        with open(self.state_dir / "up.out", "wb") as out:
            self.proc = self.lab.popen("ctl", argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                       cwd=str(Path(__file__).resolve().parents[2]))
        self.client = RootClient(self.grpc, self.state_dir / "pki")
        base = f"http://{self.ctl}:{API_PORT}"

        def api_answers() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"cloudland up exited {self.proc.returncode}:\n{self.output()}")
            try:
                return httpx.get(f"{base}/openapi.json", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(api_answers, 180, "the cluster's API to answer", every=0.5)
        # The API may answer before it has written the admin's credentials (a race seen on a busy machine).
        wait_for((self.state_dir / "admin-credentials").exists, 60, "the admin credentials", every=0.2)
        tree = Tree(self.proc, self.client, self.state_dir, self.grpc, hypervisors,  # type: ignore[arg-type]
                    pki_dir=self.state_dir / "pki")
        self.cloud = Cloud(tree, self.state_dir, "")
        fields = dict(line.split("=", 1) for line in (self.state_dir / "admin-credentials").read_text().split())
        self.cloud.http = httpx.Client(base_url=base + API, timeout=60)
        token = self.cloud.post("/login", {"username": fields["username"], "password": fields["password"]})
        self.cloud.http.headers["Authorization"] = f"Bearer {token['token']}"

    def output(self) -> str:
        path = self.state_dir / "up.out"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``cloudland ARGS`` on the controller, as the operator does."""
        env = dict(self.env, CLOUDLAND_GRPC=self.grpc, CLOUDLAND_LAUNCHER_EXEC=str(self.lab.ssh))
        return self.lab.run("ctl", [str(BIN / "cloudland"), *args], env=env, capture_output=True, text=True,
                            timeout=timeout, cwd=str(Path(__file__).resolve().parents[2]))

    # -- what the tree says -----------------------------------------------------------------

    def host_ids(self) -> dict[str, list[int]]:
        """Hypervisor ids per host, as the root holds them."""
        assert self.client is not None
        return {h.name: list(h.hypervisors) for h in self.client.hosts().hosts}

    def host_ids_flat(self) -> list[int]:
        return sorted(hv for hvs in self.host_ids().values() for hv in hvs)

    def broadcast(self, timeout: float = 5) -> tuple[dict[int, int], float]:
        """(status per hypervisor, seconds) of one ping to every hypervisor in the tree."""
        assert self.client is not None
        started = time.monotonic()
        replies = self.client.run("ping", timeout=timeout)
        return {r.hypervisor: r.status for r in replies}, time.monotonic() - started

    def answering(self, ids: list[int]) -> bool:
        statuses, _ = self.broadcast()
        return all(statuses.get(hv) == pb.OK for hv in ids)

    def api_states(self, ids: list[int]) -> set[str]:
        assert self.cloud is not None
        by_id = {h["id"]: h["state"] for h in self.cloud.hypervisors()}
        return {by_id.get(hv, "absent") for hv in ids}

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.cloud is not None and self.cloud.http is not None:
            self.cloud.http.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def processes(lab: Lab, host: str, *names: str) -> list[int]:
    """Pids on ``host`` whose command line mentions any of ``names``."""
    found = []
    for pid in lab.pids(host):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(name in cmdline for name in names):
            found.append(pid)
    return found


def ranks(lab: Lab, host: str, module: str) -> list[int]:
    """Pids of the Python processes on ``host`` running ``module`` (not the mpiexec above them)."""
    found = []
    for pid in processes(lab, host, module):
        try:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            continue
        if Path(argv0).name.startswith("python"):
            found.append(pid)
    return found


def kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def netns_of(lab: Lab, host: str) -> str:
    """The kernel's name of a lab host's network namespace, as ranks report it (PeerStatus.netns)."""
    for pid in lab.pids(host):
        try:
            return os.readlink(f"/proc/{pid}/ns/net")
        except OSError:
            continue
    raise AssertionError(f"no process on {host} to read its namespace from")


def wait_until(condition: Any, timeout: float, what: str, every: float = 0.2) -> float:
    """Seconds until ``condition()`` held; AssertionError after ``timeout``."""
    started = time.monotonic()
    wait_for(condition, timeout, what, every=every)
    return time.monotonic() - started
