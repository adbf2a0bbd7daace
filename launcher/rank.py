"""A rank with a parent (relay or leaf agent): its link up, its loop, its lifecycle.

Lifecycle (proto/README.md §5, §10): the host agent starts us; we ask the root where our
parent listens, link to it (we accept, it connects), and it sends Assign; we set up, then send
Hello with our subtree's inventory; then commands come down and batched replies, heartbeats
and events go up. When the parent falls silent (dead, or its host cut off) we link again,
to whichever process holds our parent's place by then, and our own children stay linked to
us. On Goodbye we tell our children to leave and exit; the host agent stops restarting us.

    python -m cloudland_launcher.boot cloudland_agents.leaf --node F:E --root HOST:PORT --listen ADDRESS \
        --state-dir DIR --pki DIR

The rendezvous is mutual TLS with the host's node certificate (``--pki``). The MPI link it
forms is bound to it: our link request carries a fresh nonce, and the first message on the
link, the parent's Assign, must echo it, so a process that raced the parent to our MPI port
cannot pass for it (§10.3).
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from cloudland import log as cl_log
from cloudland import mpienv, pki, procinfo
from cloudland.errors import PeerLost, WireError
from cloudland.statedir import private_umask
from cloudland.topology import NodeRange
from cloudland_launcher import rendezvous, wire
from cloudland_launcher.batch import ReplyBuffer
from cloudland_launcher.link import Backoff, Link, decode_all
from cloudland_launcher.subtree import node_id, node_range
from cloudland_proto.v1 import envelope_pb2 as pb
from cloudland_proto.v1 import link_pb2 as lpb

log = logging.getLogger(__name__)

MEMORY_EVERY = 30         # heartbeats between memory samples (smaps_rollup costs a leaf more than its beat)
ASSIGN_TIMEOUT_S = 60.0   # a linked child that is never told what it is links again
ACCEPT_WATCHDOG_S = 30.0  # MPI_Comm_accept has no timeout: a parent that never connects ends us
LINK_RETRY_MAX_S = 1.0
URGENT_S = 0.05           # reports that changed go up at most this often between heartbeats (§6.1)


class NotLinked(Exception):
    """Raised when one attempt to link to the parent fails (it is retried)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="a CloudLand rank; its host agent starts it")
    parser.add_argument("--node", required=True, help="F:E, the leaves under this rank")
    parser.add_argument("--root", required=True, help="the root's rendezvous address, host:port")
    parser.add_argument("--listen", default="127.0.0.1", help="this host's address (relays listen on it)")
    parser.add_argument("--state-dir", type=Path, default=Path("var"))
    parser.add_argument("--pki", type=Path, help="ca.pem, node.pem and node.key (default: <state-dir>/pki)")
    ns = parser.parse_args(argv)
    first, _, end = ns.node.partition(":")
    ns.node = NodeRange(int(first), int(end))
    return ns


class ChildRank:
    """Subclasses implement setup, on_command, work, pending, inventory and peers."""

    relay = False

    def __init__(self, argv: list[str] | None = None) -> None:
        ns = parse_args(argv)
        self.node: NodeRange = ns.node
        self.root_address: str = ns.root
        self.listen_host: str = ns.listen
        self.state_dir: Path = ns.state_dir
        self.tls = rendezvous.Tls.load(ns.pki or ns.state_dir / "pki", pki.NODE)
        self._nonce = b""
        self.mpi: Any = None
        self.backoff = Backoff(0.01)
        self.parent: Link | None = None
        self.parent_pid = 0
        self.parent_heard = 0.0
        self.links = 0
        self.rejected = 0
        self.assign = pb.Assign()
        self.link_address = ""
        self._beats = 0
        self._memory = (0, 0)
        self._set_up = False
        self._ppid = os.getppid()
        self._host_agent = int(os.environ.get("CLOUDLAND_HOSTD_PID", "0"))

    # -- subclass interface --------------------------------------------------

    def setup(self) -> None: ...
    def on_command(self, command: pb.Command) -> None: ...
    def work(self) -> bool: return False
    def pending(self, job_id: str) -> int: return 0
    def ready(self) -> bool: return True
    def inventory(self) -> list[pb.HypervisorReport]: return []
    def changed_reports(self) -> list[pb.HypervisorReport]: return []
    def urgent_reports(self) -> list[pb.HypervisorReport]: return []  # sent now, not at the next beat
    def peers_below(self) -> list[pb.PeerStatus]: return []
    def children_local(self) -> bool: return True
    def subtree_rejected(self) -> int: return self.rejected
    def replies_in(self) -> int: return 0
    def leave(self, reason: str) -> None: ...

    # -- the loop ------------------------------------------------------------

    def run(self) -> None:
        private_umask()  # a rank's log, and a leaf's files, are its owner's only (issue 15)
        log_file = cl_log.rank_log_file(self.state_dir, str(self.node))
        cl_log.setup(str(self.node), log_file=log_file, stderr=False)
        # Our stdout goes to a file the host agent opened; a crash must leave its trace in
        # the rank's log: fatal signals through faulthandler, exceptions through _serve.
        self._crash_file = open(log_file, "a")  # noqa: SIM115 - open for the process's life
        faulthandler.enable(self._crash_file, all_threads=True)
        try:
            self._serve()
        except Exception as exc:  # noqa: BLE001 - log it, then leave without MPI_Finalize
            log.exception("event=rank_crashed node=%s", self.node)
            self._exit(f"crashed: {exc!r}", code=1)

    def _serve(self) -> None:
        self._link_up()
        assign = self.assign
        self.buffer = ReplyBuffer(assign.linger_s)
        self.backoff.remote_max_sleep = assign.max_sleep_s
        self.backoff.local_max_sleep = assign.local_max_sleep_s or assign.max_sleep_s
        self.setup()
        self._set_up = True
        hello_sent = False
        started = time.monotonic()
        next_beat = time.monotonic() + assign.heartbeat_s
        lost_after = assign.lost_after * assign.heartbeat_s
        while True:
            active = self._from_parent()
            active |= self.work()
            if hello_sent:
                urgent = self.urgent_reports()
                if urgent:  # a heartbeat ahead of time (§6.1): changes reach the root promptly
                    self._heartbeat(urgent)
            if not hello_sent and (self.ready() or time.monotonic() - started > 60):
                self._send(hello=pb.Hello(
                    node=node_id(self.node), pid=os.getpid(), host=procinfo.HOSTNAME,
                    inventory=self.inventory(), peers=[self.status(), *self.peers_below()],
                    link_address=self.link_address,
                ))
                hello_sent = True
            if self.buffer.due(self.pending):
                batch = self.buffer.take()
                log.debug("event=replies_up count=%d", len(batch.replies))
                self._send(replies=batch)
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + assign.heartbeat_s
                self._check_host_agent()
                self._heartbeat()
                self.backoff.set_ceiling(bool(self.parent_pid) and self.children_local())
                silent = now - self.parent_heard
                why = ""
                if silent > lost_after:
                    why = f"parent silent for {silent:.1f} s"
                elif self.parent_pid and not procinfo.alive(self.parent_pid):
                    why = f"parent process {self.parent_pid} exited"
                if why:
                    self._relink(why)
                    hello_sent, started = False, time.monotonic()
            if active:
                self.backoff.activity()
            else:
                self.backoff.idle()

    # -- linking (proto/README.md §10.3) ---------------------------------------

    def _link_up(self) -> None:
        """Locate the parent, link to it and take its Assign; retried until it works."""
        delay, attempts = 0.05, 0
        while True:
            self._check_host_agent()
            try:
                self.parent = self._try_link()
                self.parent_heard = time.monotonic()
                self.assign = self._await_assign()
                self.links += 1
                if self.assign.parent_host == procinfo.HOSTNAME:
                    self.parent.peer_pid = self.parent_pid = self.assign.parent_pid
                else:
                    self.parent_pid = 0
                log.info("event=linked node=%s parent_host=%s attempts=%d", self.node,
                         self.assign.parent_host, attempts + 1)
                return
            except (NotLinked, OSError, WireError, PeerLost) as exc:
                if self.parent is not None:
                    self.parent.close()
                    self.parent = None
                attempts += 1
                # A parent that is not up yet is normal at bring-up: warn only when it lasts.
                if attempts == 1:
                    log.info("event=link_failed node=%s attempts=%d error=%s", self.node, attempts, exc)
                elif attempts == 10 or attempts % 100 == 0:
                    log.warning("event=link_failed node=%s attempts=%d error=%s", self.node, attempts, exc)
                time.sleep(delay)
                delay = min(delay * 2, LINK_RETRY_MAX_S)

    def _try_link(self) -> Link:
        answer = rendezvous.request(self.root_address, 2.0, self.tls, locate=lpb.LocateRequest(
            node=node_id(self.node), host=procinfo.HOSTNAME))
        if answer.WhichOneof("body") != "located":
            raise WireError(f"expected located from the root, got {answer.WhichOneof('body')}")
        if answer.located.refused:
            self._exit(f"the root refused us: {answer.located.reason}")
        if not answer.located.address:
            raise NotLinked(f"parent not up yet: {answer.located.reason}")
        address = answer.located.address
        with rendezvous.connect(address, 2.0, self.tls) as sock:
            # MPI is initialised only once the parent is reachable: MPI_Init with the network
            # down publishes a loopback port that no other host can reach (§10.3).
            if self.mpi is None:
                # On the interface that reaches the parent: not a VM's tap (mpienv.interface_of).
                self.mpi = mpienv.import_mpi(sock.getsockname()[0])
            port = self.mpi.Open_port()
            self._nonce = os.urandom(16)
            try:
                rendezvous.send(sock, link=lpb.LinkRequest(
                    node=node_id(self.node), pid=os.getpid(), host=procinfo.HOSTNAME, port_name=port,
                    nonce=self._nonce))
                sock.settimeout(5.0)
                frame = rendezvous.receive(sock, address)
                if frame.WhichOneof("body") != "link_answer":
                    raise WireError(f"expected link_answer from {address}, got {frame.WhichOneof('body')}")
                if not frame.link_answer.accepted:
                    raise NotLinked(f"refused by {address}: {frame.link_answer.reason}")
                with _watchdog(ACCEPT_WATCHDOG_S, f"{self.node}: the parent at {address} never connected"):
                    comm = self.mpi.COMM_SELF.Accept(port)
            finally:
                self.mpi.Close_port(port)
        return Link(self.mpi, comm, "parent", self.backoff.doorbell)

    def _await_assign(self) -> pb.Assign:
        assert self.parent is not None
        give_up = time.monotonic() + ASSIGN_TIMEOUT_S
        while time.monotonic() < give_up:
            for envelope in self._decode(self.parent.poll()):
                kind = envelope.WhichOneof("body")
                if kind == "assign":
                    if envelope.assign.link_nonce != self._nonce:
                        raise NotLinked("the first message on the link does not echo our link nonce: "
                                        "not the parent we asked over TLS")
                    if node_range(envelope.assign.node) != self.node:
                        raise NotLinked(f"assigned {node_range(envelope.assign.node)}, expected {self.node}")
                    return envelope.assign
                self._reject(WireError(f"{kind} before assign"))
            self.backoff.idle()
        raise NotLinked(f"no assignment from the parent within {ASSIGN_TIMEOUT_S:.0f} s")

    def _relink(self, why: str) -> None:
        """The parent is gone: link to its successor; our children stay linked to us."""
        log.warning("event=parent_lost node=%s reason=%s", self.node, why)
        if self.parent is not None:
            self.parent.close()
            self.parent = None
        self.buffer.take()  # owed to the old parent, which answered them UNAVAILABLE already
        self._link_up()

    def _check_host_agent(self) -> None:
        """Leave with the launcher that runs us: our mpiexec, or our host agent, died."""
        if os.getppid() != self._ppid:
            self._exit(f"the launcher that ran us (pid {self._ppid}) is gone")
        if self._host_agent and not procinfo.alive(self._host_agent):
            self._exit(f"the host agent (pid {self._host_agent}) is gone")

    # -- messages --------------------------------------------------------------

    def _from_parent(self) -> bool:
        raw = self._poll_parent()
        if raw:
            self.parent_heard = time.monotonic()
        for envelope in self._decode(raw):
            kind = envelope.WhichOneof("body")
            if kind == "command":
                log.debug("event=command job=%s op=%s", envelope.command.job_id, envelope.command.operation)
                self.on_command(envelope.command)
            elif kind == "goodbye":
                self._exit(envelope.goodbye.reason, "parent said goodbye: ")
            elif kind != "heartbeat":  # a parent's heartbeat only says it lives (§6)
                self._reject(WireError(f"{kind} from the parent is not allowed downward"))
        return bool(raw)

    def _poll_parent(self) -> list[bytes]:
        if self.parent is None:
            return []
        try:
            return self.parent.poll()
        except PeerLost as exc:
            self._relink(str(exc))
            return []

    def _decode(self, raw: list[bytes]) -> list[pb.Envelope]:
        return decode_all(raw, "parent", self._reject)

    def _reject(self, error: Exception) -> None:
        self.rejected += 1
        log.warning("event=message_rejected peer=parent error=%s", error)

    def _send(self, **body: Any) -> None:
        if self.parent is None:
            return
        try:
            self.parent.send(wire.encode(**body))
        except PeerLost as exc:
            self._relink(str(exc))

    def send_raw(self, data: bytes) -> None:
        """Send bytes that are not an envelope (test operations only)."""
        if self.parent is not None:
            self.parent.send(data)

    def _heartbeat(self, reports: list[pb.HypervisorReport] | None = None) -> None:
        if reports is None:
            if self._beats % MEMORY_EVERY == 0:
                self._memory = procinfo.memory_kib()
            self._beats += 1
            reports = self.changed_reports()
        self._send(heartbeat=pb.Heartbeat(
            reports=reports,
            peers=[self.status(), *self.peers_below()],
            rejected=self.subtree_rejected(),
        ))

    def status(self) -> pb.PeerStatus:
        return pb.PeerStatus(
            node=node_id(self.node), relay=self.relay, state=pb.PEER_OK, pid=os.getpid(),
            host=procinfo.HOSTNAME, last_heard_ms=procinfo.now_ms(),
            rss_kib=self._memory[0], pss_kib=self._memory[1],
            replies_in=self.replies_in(), replies_out=self.buffer.batches_sent,
            link_address=self.link_address, netns=procinfo.NETNS,
        )

    def send_event(self, event: pb.PeerEvent) -> None:
        self._send(event=event)

    def _exit(self, reason: str, how: str = "", code: int = 0) -> None:
        """Leave: tell our children ``reason`` (unprefixed, so it is not repeated per level)."""
        log.warning("event=rank_exit node=%s reason=%s%s", self.node, how, reason)
        if self._set_up:
            self.leave(reason)
        if self.parent is not None:
            self.parent.flush(1.0)
        # No MPI_Finalize: it can wait on a dead peer; the process simply ends.
        os._exit(code)


class _watchdog:
    """End the process if a blocking MPI call outlives ``seconds`` (it has no timeout of its own)."""

    def __init__(self, seconds: float, what: str) -> None:
        self._timer = threading.Timer(seconds, self._fire, args=(what,))
        self._timer.daemon = True

    @staticmethod
    def _fire(what: str) -> None:
        log.error("event=watchdog_fired what=%s", what)
        os._exit(3)  # the host agent starts us again

    def __enter__(self) -> None:
        self._timer.start()

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
