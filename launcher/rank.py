"""A rank with a parent (relay or leaf agent): its link up, its loop, its lifecycle.

Lifecycle (proto/README.md §5): the parent spawns us and sends Assign; we set
up, then send Hello with our subtree's inventory; then commands come down and
batched replies, heartbeats and events go up. On Goodbye, or when the parent
link fails (the parent died), we tell our own children to leave and exit.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import time
from typing import Any

from cloudland import log as cl_log
from cloudland import mpienv, procinfo
from cloudland.errors import PeerLost, WireError
from cloudland.topology import NodeRange
from cloudland_launcher import wire
from cloudland_launcher.batch import ReplyBuffer
from cloudland_launcher.link import Backoff, Link, decode_all
from cloudland_launcher.subtree import node_id, node_range
from cloudland_proto.v1 import envelope_pb2 as pb

log = logging.getLogger(__name__)

MEMORY_EVERY = 5  # heartbeats between memory samples (smaps_rollup is not free)
ASSIGN_TIMEOUT_S = 60.0  # a child that is never told what it is gives up


class ChildRank:
    """Subclasses implement setup, on_command, work, pending, inventory and peers."""

    relay = False

    def __init__(self) -> None:
        self.mpi = mpienv.import_mpi()
        parent = self.mpi.Comm.Get_parent()
        if parent == self.mpi.COMM_NULL:
            raise SystemExit("this rank is spawned by its parent; start the tree with `cloudland tree up`")
        self.backoff = Backoff(0.01)
        self.parent = Link(self.mpi, parent, "parent", self.backoff.doorbell)
        self.rejected = 0
        self.node = NodeRange(0, 1)
        self.assign = pb.Assign()
        self._beats = 0
        self._memory = (0, 0)
        self._set_up = False

    # -- subclass interface --------------------------------------------------

    def setup(self) -> None: ...
    def on_command(self, command: pb.Command) -> None: ...
    def work(self) -> bool: return False
    def pending(self, job_id: str) -> int: return 0
    def ready(self) -> bool: return True
    def inventory(self) -> list[pb.HypervisorReport]: return []
    def changed_reports(self) -> list[pb.HypervisorReport]: return []
    def peers_below(self) -> list[pb.PeerStatus]: return []
    def children_local(self) -> bool: return True
    def subtree_rejected(self) -> int: return self.rejected
    def replies_in(self) -> int: return 0
    def leave(self, reason: str) -> None: ...

    # -- the loop ------------------------------------------------------------

    def run(self) -> None:
        assign = self._await_assign()
        self.assign = assign
        self.node = node_range(assign.node)
        state_dir = assign.agent.fields["state_dir"].string_value or "var"
        log_file = cl_log.rank_log_file(state_dir, str(self.node))
        cl_log.setup(str(self.node), log_file=log_file)
        # A spawned rank's stderr reaches no one (Open MPI's launcher does not relay it
        # from a singleton root), so a crash must leave its trace in the rank's log:
        # fatal signals through faulthandler, Python exceptions through _serve below.
        self._crash_file = open(log_file, "a")  # noqa: SIM115 - open for the process's life
        faulthandler.enable(self._crash_file, all_threads=True)
        try:
            self._serve(assign)
        except Exception as exc:  # noqa: BLE001 - log it, then leave without MPI_Finalize
            log.exception("event=rank_crashed node=%s", self.node)
            self._exit(f"crashed: {exc!r}", code=1)

    def _serve(self, assign: pb.Assign) -> None:
        if assign.parent_host == procinfo.HOSTNAME:
            self.parent.peer_pid = assign.parent_pid
        self.buffer = ReplyBuffer(assign.linger_s)
        self.backoff.remote_max_sleep = assign.max_sleep_s
        self.backoff.local_max_sleep = assign.local_max_sleep_s or assign.max_sleep_s
        self.setup()
        self._set_up = True
        hello_sent = False
        started = time.monotonic()
        next_beat = time.monotonic() + assign.heartbeat_s
        while True:
            active = self._from_parent()
            active |= self.work()
            if not hello_sent and (self.ready() or time.monotonic() - started > 60):
                self._send(hello=pb.Hello(
                    node=node_id(self.node), pid=os.getpid(), host=procinfo.HOSTNAME,
                    inventory=self.inventory(), peers=[self.status(), *self.peers_below()],
                ))
                hello_sent = True
            if self.buffer.due(self.pending):
                batch = self.buffer.take()
                log.debug("event=replies_up count=%d", len(batch.replies))
                self._send(replies=batch)
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + assign.heartbeat_s
                self._heartbeat()
                self.backoff.set_ceiling(bool(self.parent.peer_pid) and self.children_local())
            if active:
                self.backoff.activity()
            else:
                self.backoff.idle()

    def _await_assign(self) -> pb.Assign:
        backoff = self.backoff
        give_up = time.monotonic() + ASSIGN_TIMEOUT_S
        while time.monotonic() < give_up:
            for envelope in self._decode(self._poll_parent()):
                if envelope.WhichOneof("body") == "assign":
                    return envelope.assign
                self._reject(WireError(f"{envelope.WhichOneof('body')} before assign"))
            backoff.idle()
        self._exit(f"no assignment from the parent within {ASSIGN_TIMEOUT_S:.0f} s")
        raise AssertionError("unreachable")

    def _from_parent(self) -> bool:
        raw = self._poll_parent()
        for envelope in self._decode(raw):
            kind = envelope.WhichOneof("body")
            if kind == "command":
                log.debug("event=command job=%s op=%s", envelope.command.job_id, envelope.command.operation)
                self.on_command(envelope.command)
            elif kind == "goodbye":
                self._exit(envelope.goodbye.reason, "parent said goodbye: ")
            else:
                self._reject(WireError(f"{kind} from the parent is not allowed downward"))
        return bool(raw)

    def _poll_parent(self) -> list[bytes]:
        try:
            return self.parent.poll()
        except PeerLost as exc:
            self._exit(f"parent lost: {exc}")
            raise AssertionError("unreachable")

    def _decode(self, raw: list[bytes]) -> list[pb.Envelope]:
        return decode_all(raw, "parent", self._reject)

    def _reject(self, error: Exception) -> None:
        self.rejected += 1
        log.warning("event=message_rejected peer=parent error=%s", error)

    def _send(self, **body: Any) -> None:
        try:
            self.parent.send(wire.encode(**body))
        except PeerLost as exc:
            self._exit(f"parent lost: {exc}")

    def send_raw(self, data: bytes) -> None:
        """Send bytes that are not an envelope (test operations only)."""
        self.parent.send(data)

    def _heartbeat(self) -> None:
        if self._beats % MEMORY_EVERY == 0:
            self._memory = procinfo.memory_kib()
        self._beats += 1
        self._send(heartbeat=pb.Heartbeat(
            reports=self.changed_reports(),
            peers=[self.status(), *self.peers_below()],
            rejected=self.subtree_rejected(),
        ))

    def status(self) -> pb.PeerStatus:
        return pb.PeerStatus(
            node=node_id(self.node), relay=self.relay, state=pb.PEER_OK, pid=os.getpid(),
            host=procinfo.HOSTNAME, last_heard_ms=procinfo.now_ms(),
            rss_kib=self._memory[0], pss_kib=self._memory[1],
            replies_in=self.replies_in(), replies_out=self.buffer.batches_sent,
        )

    def send_event(self, event: pb.PeerEvent) -> None:
        self._send(event=event)

    def _exit(self, reason: str, how: str = "", code: int = 0) -> None:
        """Leave: tell our children ``reason`` (unprefixed, so it is not repeated per level)."""
        log.info("event=rank_exit node=%s reason=%s%s", self.node, how, reason)
        if self._set_up:
            self.leave(reason)
        self.parent.flush(1.0)
        # No MPI_Finalize: it can wait on a dead peer; the process simply ends.
        os._exit(code)
