"""The children of one node (the root or a relay): spawn, route, track, heal.

Routing follows cloudland.topology; every link keeps the replies it still owes
per job, so that when a child is lost each of them is answered UNAVAILABLE at
once (flux's overlay does the same with EHOSTUNREACH). "Slow" (heartbeats
missed) and "lost" (MPI error, or silence past the lost threshold) are
separate states; a lost child is re-spawned and re-reports its inventory.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cloudland import procinfo
from cloudland.errors import PeerLost, UnknownHypervisor, WireError
from cloudland.topology import NodeRange, Shape, route
from cloudland_launcher import rendezvous, wire
from cloudland_launcher.batch import batch_of
from cloudland_launcher.doorbell import Doorbell
from cloudland_launcher.link import Link, decode_all
from cloudland_proto.v1 import envelope_pb2 as pb
from cloudland_proto.v1 import link_pb2 as lpb

log = logging.getLogger(__name__)

UP = (pb.PEER_OK, pb.PEER_SLOW)
START_TIMEOUT_S = 60.0   # a linked child with no hello by then is lost
LIVENESS_EVERY_S = 0.1   # how often a parent looks whether its children on this host still live
EXPIRY_GRACE_MS = 2000   # routing state outlives a deadline by this much


def kind_of(command: pb.Command) -> str:
    return command.targets.WhichOneof("kind") or "none"


def node_id(node: NodeRange) -> pb.NodeId:
    return pb.NodeId(first_leaf=node.first, end_leaf=node.end)


def node_range(node: pb.NodeId) -> NodeRange:
    return NodeRange(node.first_leaf, node.end_leaf)


@dataclass
class Child:
    node: NodeRange
    link: Link | None = None
    state: int = pb.PEER_STARTING
    pid: int = 0
    pid_started: int = 0   # procinfo.start_time of a local pid: a recycled pid is not our child
    host: str = ""
    spawned_at: float = 0.0
    last_heard: float = 0.0
    respawns: int = 0      # links after the first: each one a new process, or a link lost and formed again
    linked: bool = False
    pending: dict[str, set[int]] = field(default_factory=dict)  # job id -> hypervisors owed
    self_status: pb.PeerStatus | None = None
    descendants: list[pb.PeerStatus] = field(default_factory=list)
    rejected: int = 0
    link_address: str = ""


class Subtree:
    """The children below ``me``; only the MPI thread calls it."""

    def __init__(
        self,
        mpi: Any,
        assign: pb.Assign,
        me: NodeRange,
        on_replies: Callable[[pb.ReplyBatch], None],
        on_event: Callable[[pb.PeerEvent], None],
        doorbell: Doorbell,
    ) -> None:
        self.mpi = mpi
        self.doorbell = doorbell
        self.assign = assign
        self.shape = Shape(assign.hypervisors, assign.per_leaf, assign.fanout)
        self.me = me
        self.on_replies = on_replies
        self.on_event = on_event
        self.children = [Child(node) for node in self.shape.children(me)]
        self._nodes = [c.node for c in self.children]
        self._by_node = {c.node: c for c in self.children}  # children are fixed for a node's life
        self.reports: dict[int, pb.HypervisorReport] = {}
        self.changed: dict[int, pb.HypervisorReport] = {}
        self.deadlines: dict[str, int] = {}
        self.rejected = 0
        self._next_expiry = 0.0
        self.replies_in = 0
        self.hb = assign.heartbeat_s
        self._next_beat = 0.0
        self._next_liveness = 0.0
        self._beat = wire.encode(heartbeat=pb.Heartbeat())

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Children come to us: their host agents start them and they link (§10.3)."""
        now = time.monotonic()
        for child in self.children:
            child.spawned_at = child.last_heard = now

    def all_local(self) -> bool:
        """Every linked child is known to share our host (so it rings our doorbell)."""
        return all(c.link.peer_pid for c in self.children if c.link is not None)

    def all_up(self) -> bool:
        return all(c.state in UP for c in self.children)

    def shutdown(self, reason: str) -> None:
        """Say goodbye to every child and wait briefly for the words to leave."""
        goodbye = wire.encode(goodbye=pb.Goodbye(reason=reason))
        for child in self.children:
            if child.link and child.state != pb.PEER_LOST:
                try:
                    child.link.send(goodbye)
                    child.link.flush(2.0)
                except PeerLost:
                    pass

    @staticmethod
    def refuse(sock: socket.socket, reason: str) -> None:
        try:
            rendezvous.send(sock, link_answer=lpb.LinkAnswer(accepted=False, reason=reason))
        except OSError:
            pass
        sock.close()

    def attach(self, request: lpb.LinkRequest, sock: socket.socket) -> None:
        """A child's process asks to link (§10.3): say yes, connect to its port, assign it.

        A node that is linked already is taken over by the newer process: the old one is
        dead (its host restarted it) or is a duplicate, and is told goodbye.
        """
        node = node_range(request.node)
        child = self._by_node.get(node)
        if child is None:
            self.refuse(sock, f"{node} is not a child of {self.me}")
            return
        if child.link is not None:
            if child.pid != request.pid or child.host != request.host:
                try:
                    child.link.send(wire.encode(goodbye=pb.Goodbye(reason=f"replaced by pid {request.pid}")))
                except PeerLost:
                    pass
            self._lose(child, f"linked again by pid {request.pid} on {request.host}",
                       kill=child.pid != request.pid or child.host != request.host)
        try:
            rendezvous.send(sock, link_answer=lpb.LinkAnswer(accepted=True))
        except OSError as exc:
            log.warning("event=link_aborted peer=%s error=%s", node, exc)
            sock.close()
            return
        started = time.monotonic()
        try:
            # Blocks this rank until the child accepts, which it does as soon as it reads
            # our answer; a child that dies in between blocks us until MPICH gives up (§10.3).
            comm = self.mpi.COMM_SELF.Connect(request.port_name)
        except self.mpi.Exception as exc:
            log.warning("event=link_failed peer=%s error=%s", node, exc)
            return
        finally:
            sock.close()
        if child.linked:
            child.respawns += 1
        child.linked = True
        child.link = Link(self.mpi, comm, str(node), self.doorbell)
        child.state = pb.PEER_STARTING
        child.pid, child.host, child.pending = request.pid, request.host, {}
        child.spawned_at = child.last_heard = time.monotonic()
        child.pid_started = 0
        if request.host == procinfo.HOSTNAME:
            child.link.peer_pid = request.pid
            child.pid_started = procinfo.start_time(request.pid)
        assign = pb.Assign()
        assign.CopyFrom(self.assign)
        assign.node.CopyFrom(node_id(node))
        assign.parent_pid, assign.parent_host = os.getpid(), procinfo.HOSTNAME
        assign.link_nonce = request.nonce  # proves to the child that this link is the one it asked for (§10.3)
        child.link.send(wire.encode(assign=assign))
        log.info("event=linked peer=%s pid=%d host=%s connect_s=%.3f", node, request.pid, request.host,
                 time.monotonic() - started)

    # -- routing -----------------------------------------------------------

    def dispatch(self, command: pb.Command, share: list[int] | None) -> pb.ReplyBatch:
        """Send ``command`` to the children holding ``share`` (None: all).

        Returns the replies that can be given at once: UNAVAILABLE for targets
        under a child that is not up.
        """
        immediate = pb.ReplyBatch()
        try:
            shares = route(self.shape, self._nodes, share)
        except UnknownHypervisor as exc:
            raise WireError(f"job {command.job_id} targets outside {self.me}: {exc}") from exc
        if command.deadline_ms:
            self.deadlines[command.job_id] = command.deadline_ms
        sent: list[Link] = []
        for node, ids in shares.items():
            child = self._by_node[node]
            owed = set(self.shape.hypervisors_of(node) if ids is None else ids)
            if child.state not in UP or child.link is None:
                immediate.replies.extend(
                    self._unavailable(command.job_id, owed, f"{node} is {pb.PeerState.Name(child.state)}")
                )
                continue
            sub = pb.Command(job_id=command.job_id, operation=command.operation, deadline_ms=command.deadline_ms)
            if command.HasField("request"):  # unset stays unset: the request type's defaults
                sub.request.CopyFrom(command.request)
            if ids is None:
                sub.targets.all = True
            elif len(ids) == 1:
                sub.targets.hypervisor = ids[0]
            else:
                sub.targets.set.ids.extend(ids)
            child.pending[command.job_id] = owed
            log.debug("event=command_down job=%s peer=%s targets=%s", command.job_id, node, kind_of(sub))
            try:
                child.link.send(wire.encode(command=sub), ring=False)
                sent.append(child.link)
            except PeerLost as exc:
                self._lose(child, str(exc))
        # Wake the children only once every message is queued: a child woken on this host
        # can take the CPU from us before we queue the next one.
        for link in sent:
            link.ring()
        if sent:  # the copies sent down: counted with the job's replies (§3, "Message counts")
            immediate.messages.add(job_id=command.job_id, count=len(sent))
        return immediate

    def pending(self, job_id: str) -> int:
        return sum(len(c.pending.get(job_id, ())) for c in self.children)

    def forget(self, job_id: str) -> None:
        """Drop routing state of a job that ended above us (deadline passed)."""
        self.deadlines.pop(job_id, None)
        for child in self.children:
            child.pending.pop(job_id, None)

    def _unavailable(self, job_id: str, hypervisors: set[int], why: str) -> list[pb.Reply]:
        return [
            pb.Reply(
                job_id=job_id,
                hypervisor=hv,
                status=pb.UNAVAILABLE,
                error=f"unavailable: {why} (hypervisor {hv}, job {job_id})",
            )
            for hv in sorted(hypervisors)
        ]

    # -- receiving ---------------------------------------------------------

    def poll(self) -> bool:
        """Read every child's messages; True if anything arrived."""
        active = False
        # Every probe drives the whole provider's progress (§7), so with several children a link
        # to a child on this host is probed once: the later probes complete what the earlier
        # ones started reading, and such a child pushed its message before ringing us. A child
        # on another host does not ring: its link keeps the second probe.
        several = len(self.children) > 1
        for child in self.children:
            if child.link is None or child.state == pb.PEER_LOST:
                continue
            try:
                raw = child.link.poll(again=not (several and child.link.peer_pid))
            except PeerLost as exc:
                self._lose(child, str(exc))
                active = True
                continue
            if not raw:
                continue
            active = True
            child.last_heard = time.monotonic()
            if child.state == pb.PEER_SLOW:
                child.state = pb.PEER_OK
                self._event(child, "heard again")
            for envelope in decode_all(raw, str(child.node), lambda e, c=child: self._reject(c, e)):
                self._handle(child, envelope)
        return active

    def _reject(self, child: Child, error: Exception) -> None:
        self.rejected += 1
        log.warning("event=message_rejected peer=%s error=%s", child.node, error)

    def _handle(self, child: Child, envelope: pb.Envelope) -> None:
        kind = envelope.WhichOneof("body")
        if kind == "replies":
            self.replies_in += 1
            self._accept_replies(child, envelope.replies)
        elif kind == "heartbeat":
            self._merge_reports(envelope.heartbeat.reports)
            self._merge_peers(child, envelope.heartbeat.peers)
            child.rejected = envelope.heartbeat.rejected
        elif kind == "event":
            self.on_event(envelope.event)
        elif kind == "hello":
            self._hello(child, envelope.hello)
        elif kind == "goodbye":
            self._lose(child, f"said goodbye: {envelope.goodbye.reason}", kill=False)
        else:  # a child never sends commands or assignments up: refuse, never execute (§5)
            self._reject(child, WireError(f"{kind} from child {child.node} is not allowed upward"))

    def _accept_replies(self, child: Child, batch: pb.ReplyBatch) -> None:
        """Pass on the replies this child owes, and what their jobs cost below it; drop late (job
        expired) and duplicate ones."""
        accepted = pb.ReplyBatch()
        accepted.messages.extend(entry for entry in batch.messages if entry.job_id in child.pending)
        for entry in batch.ok:  # the compact form: set operations, no per-reply Python
            owed = child.pending.get(entry.job_id)
            if owed is None:
                continue
            fresh = owed.intersection(entry.hypervisors)
            owed.difference_update(fresh)
            if len(fresh) == len(entry.hypervisors):
                accepted.ok.append(entry)
            elif fresh:
                accepted.ok.add(job_id=entry.job_id, hypervisors=sorted(fresh))
            if not owed:
                self._settled(child, entry.job_id)
        for reply in batch.replies:
            owed = child.pending.get(reply.job_id)
            if owed is None or reply.hypervisor not in owed:
                continue
            owed.discard(reply.hypervisor)
            if not owed:
                self._settled(child, reply.job_id)
            accepted.replies.append(reply)
        if accepted.replies or accepted.ok or accepted.messages:
            self.on_replies(accepted)

    def _settled(self, child: Child, job_id: str) -> None:
        """``child`` owes nothing more for ``job_id``; once no child does, forget its deadline."""
        del child.pending[job_id]
        if not any(job_id in c.pending for c in self.children):
            self.deadlines.pop(job_id, None)

    def _hello(self, child: Child, hello: pb.Hello) -> None:
        if node_range(hello.node) != child.node:
            self._reject(child, WireError(f"hello from {child.node} claims {node_range(hello.node)}"))
            return
        if (hello.pid, hello.host) != (child.pid, child.host):
            child.pid_started = procinfo.start_time(hello.pid) if hello.host == procinfo.HOSTNAME else 0
        child.pid, child.host, child.link_address = hello.pid, hello.host, hello.link_address
        if child.link and hello.host == procinfo.HOSTNAME:
            child.link.peer_pid = hello.pid
        self._merge_reports(hello.inventory)
        self._merge_peers(child, hello.peers)
        child.state = pb.PEER_OK
        took = time.monotonic() - child.spawned_at
        self._event(child, f"up in {took:.2f} s" + (f" after relink {child.respawns}" if child.respawns else ""))

    def _merge_reports(self, reports: Any) -> None:
        for report in reports:
            self.reports[report.hypervisor] = report
            self.changed[report.hypervisor] = report

    def _merge_peers(self, child: Child, peers: Any) -> None:
        mine = node_id(child.node)
        child.descendants = []
        for peer in peers:
            if peer.node == mine:
                child.self_status = peer
            else:
                child.descendants.append(peer)

    # -- health ------------------------------------------------------------

    def check(self) -> None:
        """Advance peer states by silence and liveness, beat to the children, expire old jobs."""
        now = time.monotonic()
        beat = now >= self._next_beat
        if beat:
            self._next_beat = now + self.hb
        local = now >= self._next_liveness
        if local:
            self._next_liveness = now + LIVENESS_EVERY_S
        for child in self.children:
            if child.link is None or child.state == pb.PEER_LOST:
                continue  # no process of it is linked: its host agent starts one, and it links (§10)
            silent = now - child.last_heard
            if local and child.host == procinfo.HOSTNAME and child.pid_started \
                    and not procinfo.same_process(child.pid, child.pid_started):
                self._lose(child, f"process {child.pid} exited")
            elif child.state == pb.PEER_STARTING:
                # Timed from the link: a child that heartbeats but never says hello is not up.
                if now - child.spawned_at > START_TIMEOUT_S:
                    self._lose(child, f"no hello {START_TIMEOUT_S:.0f} s after linking")
            elif silent > self.assign.lost_after * self.hb:
                self._lose(child, f"silent for {silent:.1f} s")
            elif silent > self.assign.slow_after * self.hb and child.state == pb.PEER_OK:
                child.state = pb.PEER_SLOW
                self._event(child, f"no heartbeat for {silent:.1f} s")
            if beat and child.link is not None:
                try:  # the child's proof that we live: MPI never reports a cut link (§6)
                    child.link.send(self._beat)
                except PeerLost as exc:
                    self._lose(child, str(exc))
        if self.deadlines and now >= self._next_expiry:
            self._next_expiry = now + 0.1  # a scan of every job is not needed on each loop pass
            cutoff = procinfo.now_ms() - EXPIRY_GRACE_MS
            for job_id in [j for j, d in self.deadlines.items() if d < cutoff]:
                self.forget(job_id)

    def drop(self, child: Child, reason: str) -> None:
        """Let go of a child on purpose (its host was removed): what it owes is answered now."""
        self._lose(child, reason, kill=False)

    def _lose(self, child: Child, reason: str, kill: bool = True) -> None:
        if child.state == pb.PEER_LOST:
            return
        log.warning("event=peer_lost peer=%s pid=%s reason=%s", child.node, child.pid, reason)
        owed = child.pending
        child.pending = {}
        child.state = pb.PEER_LOST
        # A silent (hung) process may still live: end it, so its host agent starts a fresh one.
        # Only that process: by the time a silent child is judged lost its pid may be another's.
        if kill and child.host == procinfo.HOSTNAME:
            procinfo.kill_if_same(child.pid, child.pid_started, signal.SIGKILL)
        if child.link:
            child.link.close()
            child.link = None
        self._event(child, reason)
        for job_id, hypervisors in owed.items():
            self.on_replies(batch_of(self._unavailable(job_id, hypervisors, f"{child.node} lost: {reason}")))

    def _event(self, child: Child, reason: str) -> None:
        self.on_event(pb.PeerEvent(node=node_id(child.node), state=child.state, reason=reason, at_ms=procinfo.now_ms()))

    def peers(self) -> list[pb.PeerStatus]:
        """Status of every rank below us, in our view: a child's state is what we see."""
        out: list[pb.PeerStatus] = []
        now = time.monotonic()
        for child in self.children:
            status = pb.PeerStatus()
            if child.self_status is not None:
                status.CopyFrom(child.self_status)
            status.node.CopyFrom(node_id(child.node))
            status.relay = not child.node.is_leaf
            status.state = child.state
            status.pid, status.host, status.respawns = child.pid, child.host, child.respawns
            status.link_address = child.link_address or status.link_address
            status.last_heard_ms = procinfo.now_ms() - int((now - child.last_heard) * 1000)
            out.append(status)
            for peer in child.descendants:
                below = pb.PeerStatus()
                below.CopyFrom(peer)
                if child.state not in UP:  # its subtree went down with it
                    below.state = child.state
                out.append(below)
        return out

    def subtree_rejected(self) -> int:
        return self.rejected + sum(c.rejected for c in self.children)
