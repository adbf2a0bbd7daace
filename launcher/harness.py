"""Start and stop a real tree (a root process and its spawned ranks) for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cloudland import mpienv, pki, procinfo
from cloudland.client import RootClient
from cloudland_proto.v1 import envelope_pb2 as pb


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def node_name(node: pb.NodeId) -> str:
    size = node.end_leaf - node.first_leaf
    return f"leaf {node.first_leaf}" if size == 1 else f"relay[{node.first_leaf}:{node.end_leaf})"


@dataclass
class Tree:
    proc: subprocess.Popen[bytes]
    client: RootClient
    state_dir: Path
    endpoint: str
    hypervisors: int
    # Every rank process seen, pid -> procinfo.start_time: the teardown kills what is left of
    # them, and only them (a pid of a rank that died long ago may be a stranger's by then).
    seen: dict[int, int] = field(default_factory=dict)
    pki_dir: Path | None = None  # its CA and certificates (cloudland/pki.py)

    @property
    def seen_pids(self) -> list[int]:
        return list(self.seen)

    def peers(self) -> dict[str, pb.PeerStatus]:
        """Every rank below the root by name, e.g. 'leaf 3' or 'relay[0:8)'."""
        health = self.client.health()
        peers = {node_name(p.node): p for p in health.peers[1:]}
        for pid in [p.pid for p in health.peers if p.pid and p.pid not in self.seen]:
            self.seen[pid] = procinfo.start_time(pid)
        return peers

    def alive(self) -> list[int]:
        """The ranks seen that still run (the same processes, not their recycled pids)."""
        return [pid for pid, started in self.seen.items() if procinfo.same_process(pid, started)]

    def log(self, rank: str) -> str:
        safe = rank.replace(" ", "-").replace("[", "").replace(")", "").replace(":", "-")
        path = self.state_dir / "logs" / f"{safe}.log"
        return path.read_text() if path.exists() else ""


def wait_for(condition: Callable[[], object], timeout: float, what: str, every: float = 0.1) -> object:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def start_tree(
    state_dir: Path, hypervisors: int, per_leaf: int, fanout: int, heartbeat: float = 0.5, *extra: str
) -> Tree:
    """Start ``python -m cloudland_launcher`` with test operations and wait until every rank is up.

    Its CA is ``$CLOUDLAND_PKI`` (tests/conftest.py makes one per session), else its own."""
    port = free_port()
    endpoint = f"127.0.0.1:{port}"
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    pki_dir = pki.default_dir() if os.environ.get("CLOUDLAND_PKI") else state_dir / "pki"
    log = open(state_dir / "root.out", "wb")
    env = dict(os.environ)
    mpienv.apply(env)  # mpiexec finds its proxy on PATH
    # The root is an MPI job of its own under mpiexec -n 1, as `cloudland up` runs it (cli/start.py)
    # and as every rank runs: MPICH singletons share one job name (issue 15).
    proc = subprocess.Popen(
        mpienv.rank_argv([
            sys.executable, "-m", "cloudland_launcher", "--hypervisors", str(hypervisors),
            "--per-leaf", str(per_leaf), "--fanout", str(fanout), "--grpc", endpoint,
            "--state-dir", str(state_dir), "--pki", str(pki_dir), "--heartbeat", str(heartbeat), "--test-ops",
            *extra]),
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
    )
    client = RootClient(endpoint, pki_dir)
    try:
        client.wait_ready(timeout=180)
    except Exception:
        stop_tree(Tree(proc, client, state_dir, endpoint, hypervisors))
        raise AssertionError((state_dir / "root.out").read_text()[-3000:])
    tree = Tree(proc, client, state_dir, endpoint, hypervisors, pki_dir=pki_dir)
    tree.peers()
    return tree


def stop_tree(tree: Tree) -> None:  # noqa: C901 - one linear teardown
    """SIGTERM the root (it says goodbye down the tree); then make sure no rank is left."""
    try:
        tree.peers()
    except Exception:
        pass
    tree.client.close()
    if tree.proc.poll() is None:
        tree.proc.send_signal(signal.SIGTERM)
        try:
            tree.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(tree.proc.pid, signal.SIGKILL)
            tree.proc.wait()
    # The root's local host agent runs in a session of its own, to outlive a root that dies
    # (a successor adopts it): a root that was killed leaves it, and it respawns its ranks.
    agent, _argv = procinfo.local_host_agent(tree.state_dir)
    agent_started = procinfo.start_time(agent) if agent else 0
    procinfo.kill_if_same(agent, agent_started, signal.SIGTERM)  # it stops its ranks
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (tree.alive() or procinfo.same_process(agent, agent_started)):
        time.sleep(0.1)
    procinfo.kill_if_same(agent, agent_started, signal.SIGKILL)
    left = tree.alive()
    for pid in left:
        procinfo.kill_if_same(pid, tree.seen[pid], signal.SIGKILL)
    try:
        os.killpg(tree.proc.pid, signal.SIGKILL)  # what is left of the root's mpiexec job
    except ProcessLookupError:
        pass
    assert not left, f"ranks still alive after the root stopped: {left}"
