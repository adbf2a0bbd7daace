"""The host agent: one per host, it runs and restarts that host's ranks (proto/README.md §10.4).

No launcher owns the tree. The operator's ``mpiexec --hostfile`` (or systemd) starts one host
agent per host; it keeps a channel to the root, which tells it which leaf and relay ranks to
run. Each rank is an MPI job of its own under a host-local ``mpiexec -n 1``; when one dies the
host agent starts it again, and the new process links itself back into the tree. The agent
uses no MPI itself, so nothing in it can hang on a dead peer.

    python -m cloudland_launcher.hostd --root 10.0.0.1:50552 [--address 10.0.0.5] [--leaves 1] [--pki DIR]

Its channel and its ranks' links are mutual TLS with the node certificate of ``--pki``
(``ca.pem``, ``node.pem``, ``node.key``, copied from the controller by the operator; README
"Running a cluster"), which it hands to its ranks.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cloudland import log as cl_log
from cloudland import mpienv, pki, procinfo
from cloudland.config import TreeSettings
from cloudland.errors import ConfigError, WireError
from cloudland.priority import raise_priority
from cloudland.restarts import Restarts
from cloudland.statedir import private_umask
from cloudland.topology import NodeRange
from cloudland_launcher import rendezvous
from cloudland_launcher.subtree import node_range
from cloudland_proto.v1 import link_pb2 as lpb

log = logging.getLogger(__name__)

RESTART_MIN_S = 0.1     # first restart delay of a rank that died
RESTART_MAX_S = 5.0     # ... doubling up to this while it keeps dying (cloudland/restarts.py)
PING_S = 1.0            # the channel's keep-alive both ways
CHANNEL_LOST_S = 5.0    # silence on the channel past this: reconnect
STOP_GRACE_S = 5.0


@dataclass
class Rank:
    node: NodeRange
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restart: Restarts = field(default_factory=lambda: Restarts(RESTART_MIN_S, RESTART_MAX_S))
    restart_at: float = 0.0
    restarts: int = 0


@dataclass
class HostAgent:
    root: str
    address: str
    leaves: int
    state_dir: Path
    pki_dir: Path
    host: str = field(default_factory=lambda: procinfo.HOSTNAME)
    # What runs a node: the rank under its own mpiexec, unless a test gives another command.
    command: Callable[[NodeRange], list[str]] | None = None
    ranks: dict[NodeRange, Rank] = field(default_factory=dict)
    held: list[int] = field(default_factory=list)
    stopping: str = ""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.tls = rendezvous.Tls.load(self.pki_dir, pki.NODE)

    # -- the channel to the root -------------------------------------------

    def run(self) -> int:
        threading.Thread(target=self._supervise, name="supervise", daemon=True).start()
        delay = 0.1
        while not self.stopping:
            try:
                self._session()
                delay = 0.1
            except (OSError, WireError) as exc:
                if self.stopping:
                    break
                log.warning("event=root_channel_lost root=%s error=%s", self.root, exc)
            self._wake.wait(delay)
            delay = min(delay * 2, 2.0)
        self._stop_all()
        log.warning("event=hostd_exit host=%s reason=%s", self.host, self.stopping)
        return 0

    def _session(self) -> None:
        """One connection to the root: hello, welcome, then orders until it breaks."""
        with rendezvous.connect(self.root, 2.0, self.tls) as sock:
            rendezvous.send(sock, host_hello=lpb.HostHello(
                host=self.host, address=self.address, leaves=self.leaves, held=self.held, pid=os.getpid()))
            sock.settimeout(CHANNEL_LOST_S)
            welcome = rendezvous.receive(sock, "root")
            if welcome.WhichOneof("body") != "welcome":
                raise WireError(f"expected welcome from the root, got {welcome.WhichOneof('body')}")
            if welcome.welcome.refused:
                log.error("event=host_refused host=%s reason=%s", self.host, welcome.welcome.reason)
                self.stop(f"refused by the root: {welcome.welcome.reason}")
                return
            self.held = list(welcome.welcome.leaves)
            wanted = {node_range(n) for n in welcome.welcome.run}
            with self._lock:
                stale = [n for n in self.ranks if n not in wanted]
            for node in stale:
                self._unwant(node, "not placed on this host any more")
            for node in wanted:
                self._want(node)
            log.warning("event=host_joined host=%s root=%s leaves=%s", self.host, self.root, self.held)
            pinger = threading.Thread(target=self._ping, args=(sock,), daemon=True)
            pinger.start()
            while not self.stopping:
                frame = rendezvous.receive(sock, "root")
                kind = frame.WhichOneof("body")
                if kind == "run":
                    self._want(node_range(frame.run.node))
                elif kind == "stop":
                    self._unwant(node_range(frame.stop.node), frame.stop.reason)
                elif kind == "goodbye":
                    self.stop(f"the root said goodbye: {frame.goodbye.reason}")
                elif kind != "ping":
                    log.warning("event=frame_rejected peer=root kind=%s", kind)

    def _ping(self, sock: rendezvous.Conn) -> None:
        while not self.stopping:
            time.sleep(PING_S)
            try:
                rendezvous.send(sock, ping=lpb.Ping())
            except OSError:
                return

    def stop(self, reason: str) -> None:
        self.stopping = self.stopping or reason
        self._wake.set()

    # -- the ranks -----------------------------------------------------------

    def _want(self, node: NodeRange) -> None:
        with self._lock:
            if node not in self.ranks:
                self.ranks[node] = Rank(node)
                log.info("event=rank_wanted node=%s", node)
        self._wake.set()

    def _unwant(self, node: NodeRange, reason: str) -> None:
        with self._lock:
            rank = self.ranks.pop(node, None)
        if rank is not None:
            log.warning("event=rank_stopped node=%s reason=%s", node, reason)
            _terminate(rank)

    def argv(self, node: NodeRange) -> list[str]:
        if self.command is not None:
            return self.command(node)
        module = "cloudland_agents.leaf" if node.is_leaf else "cloudland_launcher.relay"
        return mpienv.rank_argv([
            sys.executable, "-m", "cloudland_launcher.boot", module, "--node", f"{node.first}:{node.end}",
            "--root", self.root,
            "--listen", self.address, "--state-dir", str(self.state_dir), "--pki", str(self.pki_dir),
        ])

    def _supervise(self) -> None:
        """Start wanted ranks; restart the ones that die, with backoff while they keep dying."""
        env = dict(os.environ, CLOUDLAND_HOSTD_PID=str(os.getpid()))
        mpienv.apply(env)
        while not self.stopping:
            now = time.monotonic()
            with self._lock:
                ranks = list(self.ranks.values())
            for rank in ranks:
                if rank.proc is not None and rank.proc.poll() is not None:
                    code = rank.proc.returncode
                    up = now - rank.started
                    delay = rank.restart.after_exit(code, up)
                    rank.restart_at = now + delay
                    rank.proc = None
                    rank.restarts += 1
                    log.warning("event=rank_exited node=%s code=%s up_s=%.1f restart_in_s=%.2f",
                                rank.node, code, up, delay)
                if rank.proc is None and now >= rank.restart_at and not self.stopping:
                    self._start(rank, env, now)
            self._wake.wait(0.05)
            self._wake.clear()

    def _start(self, rank: Rank, env: dict[str, str], now: float) -> None:
        try:
            with open(cl_log.rank_log_file(self.state_dir, f"{rank.node}.out"), "ab") as out:
                rank.proc = subprocess.Popen(self.argv(rank.node), env=env, stdout=out,
                                             stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:  # no mpiexec, a full disk: say so, and try again later
            rank.restart_at = now + rank.restart.after_failed_start()
            log.error("event=rank_start_failed node=%s host=%s error=%s", rank.node, self.host, exc)
            return
        rank.started = now
        # Its mpiexec is a session of its own: its autogroup too at our nice (cloudland/priority.py).
        raise_priority(os.getpriority(os.PRIO_PROCESS, 0), f"{rank.node} mpiexec", pid=rank.proc.pid)
        log.info("event=rank_started node=%s pid=%d", rank.node, rank.proc.pid)

    def _stop_all(self) -> None:
        with self._lock:
            ranks = list(self.ranks.values())
            self.ranks.clear()
        for rank in ranks:
            _terminate(rank, wait=False)
        end = time.monotonic() + STOP_GRACE_S
        for rank in ranks:
            if rank.proc is not None:
                try:
                    rank.proc.wait(max(0.0, end - time.monotonic()))
                except subprocess.TimeoutExpired:
                    _kill_group(rank.proc.pid, signal.SIGKILL)


def _kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def _terminate(rank: Rank, wait: bool = True) -> None:
    """SIGTERM the rank's mpiexec, which passes it on to the rank (and SIGKILL after a grace)."""
    if rank.proc is None or rank.proc.poll() is not None:
        return
    _kill_group(rank.proc.pid, signal.SIGTERM)
    if wait:
        try:
            rank.proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            _kill_group(rank.proc.pid, signal.SIGKILL)
            rank.proc.wait()


def route_address(root: str) -> str:
    """This host's address on the network that reaches the root (no packet is sent)."""
    host, port = rendezvous.split_address(root)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((host, port))
        return str(probe.getsockname()[0])


def daemonize(log_file: Path) -> None:
    """Detach from the launcher that started us, so its end is not ours (the operator's mpiexec)."""
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    # Every other descriptor too: hydra hands its process a PMI socket (PMI_FD), and its proxy
    # waits for that to close before the launcher can end.
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    for key in [k for k in os.environ if k.startswith(("PMI_", "HYDRA_", "MPI_LOCALNRANKS", "MPI_LOCALRANKID"))]:
        del os.environ[key]  # not ours: the ranks we start are MPI jobs of their own


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cloudland_launcher.hostd", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="the root's rendezvous address, host:port")
    parser.add_argument("--address", help="this host's address for its ranks' listeners (default: "
                                          "the one that routes to the root)")
    parser.add_argument("--leaves", default="1", help="leaf ranks this host runs (default 1), or 'all'")
    parser.add_argument("--host", default=procinfo.HOSTNAME, help="this host's name (default: hostname)")
    parser.add_argument("--state-dir", default=os.environ.get("CLOUDLAND_STATE_DIR", "var"),
                        help="this host's state; '{host}' in it is replaced by the host's name")
    parser.add_argument("--pki", help="the directory of ca.pem, node.pem and node.key (default: "
                                      "$CLOUDLAND_PKI, else <state-dir>/pki)")
    parser.add_argument("--daemon", action="store_true", help="detach (for the operator's mpiexec)")
    ns = parser.parse_args(argv)
    private_umask()  # our logs, pid file and ranks' files are the owner's only (issue 15)
    try:
        rendezvous.split_address(ns.root)
    except WireError as exc:
        parser.error(str(exc))
    leaves = 0 if ns.leaves == "all" else int(ns.leaves)
    state_dir = Path(ns.state_dir.replace("{host}", ns.host)).resolve()
    (state_dir / "logs").mkdir(parents=True, exist_ok=True)
    pki_dir = Path(ns.pki or os.environ.get("CLOUDLAND_PKI") or state_dir / "pki").resolve()
    try:
        pki.Credentials.load(pki_dir, pki.NODE)  # said here, before we detach from the operator's terminal
        # Only this variable: the host's others are its ranks' business, checked where they are used.
        nice = TreeSettings.from_env({k: v for k, v in os.environ.items() if k == "CLOUDLAND_TREE_NICE"}).tree_nice
    except ConfigError as exc:
        print(f"cloudland: host {ns.host}: {exc}", file=sys.stderr)
        return 2
    log_file = cl_log.rank_log_file(state_dir, f"hostd-{ns.host}")
    if ns.daemon:
        daemonize(log_file)
    cl_log.setup(f"hostd {ns.host}", log_file=None if ns.daemon else log_file)
    if ns.daemon:
        cl_log.setup(f"hostd {ns.host}")  # stderr is the log file now
    # Before any thread or rank: they inherit it (cloudland/priority.py).
    raise_priority(nice, f"hostd {ns.host}")
    address = ns.address or route_address(ns.root)
    agent = HostAgent(ns.root, address, leaves, state_dir, pki_dir, host=ns.host)
    (state_dir / f"hostd-{ns.host}.pid").write_text(f"{os.getpid()}\n")
    signal.signal(signal.SIGTERM, lambda *_: agent.stop("SIGTERM"))
    signal.signal(signal.SIGINT, lambda *_: agent.stop("SIGINT"))
    return agent.run()


if __name__ == "__main__":
    sys.exit(main())
