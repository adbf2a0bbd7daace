"""Start and stop a real tree (a root process and its spawned ranks) for tests and benchmarks."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import string
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cloudland import mpienv, netclean, pki, procinfo
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
    # With CLOUDLAND_NETWORK=netns its simulated hypervisors make namespaces, links and dnsmasq
    # on this machine under this prefix (cloudland/netclean.py); stop_tree removes them. "" if not.
    network_prefix: str = ""

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
    network_prefix = ""
    if env.get("CLOUDLAND_NETWORK") == "netns":
        # What its hypervisors make outlives its ranks, as a host's network outlives its agent:
        # named by a prefix of this tree's own (unless one was chosen), removed by stop_tree.
        network_prefix = env.get("CLOUDLAND_NETWORK_PREFIX") or "h" + "".join(
            secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5))
        env["CLOUDLAND_NETWORK_PREFIX"] = network_prefix
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
        stop_tree(Tree(proc, client, state_dir, endpoint, hypervisors, network_prefix=network_prefix))
        raise AssertionError((state_dir / "root.out").read_text()[-3000:])
    tree = Tree(proc, client, state_dir, endpoint, hypervisors, pki_dir=pki_dir, network_prefix=network_prefix)
    tree.peers()
    return tree


def stop_tree(tree: Tree) -> None:  # noqa: C901 - one linear teardown
    """SIGTERM the root (it says goodbye down the tree); then make sure no rank is left, nor
    anything its hypervisors made on this machine (``remove_network``, ``leftovers``)."""
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
    remove_network(tree)
    assert not left, f"ranks still alive after the root stopped: {left}"
    behind = leftovers(tree)
    assert not behind, f"the tree in {tree.state_dir} left behind: {behind}"


def _processes_of(state_dir: Path) -> dict[int, str]:
    """Processes whose command line names a path in ``state_dir`` (a hypervisor's dnsmasq, a
    test guest's udhcpc, a rank), pid -> command line; this process excepted."""
    inside, found = str(state_dir) + os.sep, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            argv = procinfo.argv_of(int(entry))
            if any(arg == str(state_dir) or inside in arg for arg in argv):
                found[int(entry)] = " ".join(argv)[:200]
    return found


def remove_network(tree: Tree) -> None:
    """Once its ranks are gone: the namespaces, links and processes its hypervisors made (the
    processes in those namespaces first), and any process still naming its state directory
    (a dnsmasq outside them: one whose namespace was deleted under it)."""
    if tree.network_prefix:
        netclean.remove_run(tree.network_prefix)
    for pid in _processes_of(tree.state_dir):
        procinfo.kill_if_same(pid, procinfo.start_time(pid), signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _processes_of(tree.state_dir):
        time.sleep(0.05)


def leftovers(tree: Tree) -> list[str]:
    """What the tree left on this machine after its stop: its network prefix's namespaces and
    links, and processes naming its state directory. Empty after a clean stop (stop_tree checks)."""
    found: list[str] = []
    if tree.network_prefix:
        found += [f"namespace {n}" for n in netclean.run_namespaces(tree.network_prefix)]
        found += [f"link {n}" for n in netclean.run_links(tree.network_prefix)]
    found += [f"process {pid}: {argv}" for pid, argv in _processes_of(tree.state_dir).items()]
    return found
