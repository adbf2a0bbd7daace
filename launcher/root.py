"""The root rank: owns the job table, routes commands into the tree, answers gRPC.

The MPI loop runs on the main thread. gRPC handlers never touch MPI: they put
requests on ``inbox`` and ring the loop's doorbell; the loop answers through
per-job queues (Dispatch) or futures (Topology, Health). The rendezvous listener
(§10) does the same with ranks' locate and link requests and host agents' channels.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudland import pki, procinfo
from cloudland.config import TreeSettings
from cloudland.errors import Conflict, UnknownHypervisor, WireError
from cloudland.topology import NodeRange, Shape
from cloudland_launcher import rendezvous
from cloudland_launcher.batch import batch_of
from cloudland_launcher.hosts import Membership
from cloudland_launcher.link import Backoff
from cloudland_launcher.subtree import UP, Subtree, node_id, node_range
from cloudland_launcher.watch import WatchHub
from cloudland_proto.v1 import envelope_pb2 as pb
from cloudland_proto.v1 import link_pb2 as lpb
from cloudland_proto.v1 import root_pb2

log = logging.getLogger(__name__)

# Where the all-in-one root's rendezvous listened (issue 15, supervision): a root started
# again binds the same port, so the host agent and ranks of its predecessor find it there.
RENDEZVOUS_FILE = "rendezvous.address"
HOSTD_MODULE = "cloudland_launcher.hostd"
# For this long after its start the root answers a command to a hypervisor that no host holds
# UNAVAILABLE (asked again), not UNKNOWN_HYPERVISOR (final): after a restart its hosts rejoin
# within seconds (their agents retry every 2 s at most, proto/README.md §10.4).
REJOIN_GRACE_S = 15.0

END = None  # marks the end of a job's reply stream


class DuplicateJob(Exception):
    """Raised (to the gRPC handler) when a job id is already in flight."""


@dataclass
class Job:
    command: pb.Command
    remaining: set[int]
    out: queue.SimpleQueue[Any]
    messages: int = 0  # tree messages it cost so far, not yet streamed (§3, "Message counts")


class Root:
    def __init__(self, settings: TreeSettings, mpi: Any) -> None:
        self.settings = settings
        self.mpi = mpi
        self.shape: Shape = settings.shape
        assign = pb.Assign(
            node=node_id(self.shape.root), hypervisors=self.shape.hypervisors, per_leaf=self.shape.per_leaf,
            fanout=self.shape.fanout, heartbeat_s=settings.heartbeat_s, slow_after=settings.slow_after,
            lost_after=settings.lost_after, max_sleep_s=settings.max_sleep_s, linger_s=settings.linger_s,
            local_max_sleep_s=settings.local_max_sleep_s,
        )
        assign.agent.update({
            "driver": settings.driver, "libvirt_uri": settings.libvirt_uri, "vnc_listen": settings.vnc_listen,
            "state_dir": str(settings.state_dir.resolve()), "test_ops": settings.test_ops,
            "network": settings.network, "network_prefix": settings.network_prefix,
            "rbd_backends": settings.rbd_backends,
        })
        self.backoff = Backoff(settings.max_sleep_s)
        self.backoff.local_max_sleep = settings.local_max_sleep_s
        self.subtree = Subtree(
            mpi, assign, self.shape.root, self._on_replies, self._on_event, self.backoff.doorbell
        )
        self.inbox: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.jobs: dict[str, Job] = {}
        self.deadlines: list[tuple[int, str]] = []
        self.events: deque[pb.PeerEvent] = deque(maxlen=200)
        self.started = time.monotonic()
        self.build_seconds = 0.0
        self.stopping = ""
        self._next_ceiling = 0.0
        self.members = Membership(self.shape)
        self.channels: dict[str, rendezvous.Conn] = {}  # host name -> its host agent's channel
        self.listener: rendezvous.Listener | None = None
        self.local_agent: subprocess.Popen[bytes] | None = None
        self.adopted_agent = 0  # pid of a predecessor's local host agent that we took over
        self._view: dict[NodeRange, pb.PeerStatus] = {}
        self._view_at = 0.0
        self.watch = WatchHub()                        # the Watch streams (launcher/watch.py)
        self._watch_events: list[pb.PeerEvent] = []    # not yet passed on to them
        self._next_watch = 0.0

    # -- called from gRPC threads ---------------------------------------------

    def submit(self, kind: str, *args: Any) -> None:
        self.inbox.put((kind, *args))
        self.backoff.notify()

    # -- the loop (main thread) -----------------------------------------------

    def run(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self._stop("SIGTERM"))
        signal.signal(signal.SIGINT, lambda *_: self._stop("SIGINT"))
        self.subtree.start()
        if self.listener is None:
            self.listen()
        if not self.settings.cluster:
            self._start_local_agent()
        while not self.stopping:
            started = time.monotonic()
            active = self._serve_inbox()
            active |= self.subtree.poll()
            self.subtree.check()
            self._expire()
            self._feed_watch()
            if time.monotonic() >= self._next_ceiling:
                self._next_ceiling = time.monotonic() + 1.0
                self.backoff.set_ceiling(self.subtree.all_local())
                for name in list(self.channels):  # host agents hear from us every second (§10.4)
                    self._order(name, ping=lpb.Ping())
            if not self.build_seconds and self._all_present_up():
                self.build_seconds = time.monotonic() - self.started
                self._next_watch = 0.0
                log.warning("event=tree_ready hypervisors=%d build_s=%.2f", self.shape.hypervisors, self.build_seconds)
            took = time.monotonic() - started
            if took > 1.0:  # nothing here should block: say so if something did (a Spawn, usually)
                log.warning("event=slow_loop seconds=%.2f jobs_in_flight=%d", took, len(self.jobs))
            if active:
                self.backoff.activity()
            else:
                self.backoff.idle()
        self._shutdown()

    def _stop(self, why: str) -> None:
        self.stopping = why
        self.backoff.notify()

    def _serve_inbox(self) -> bool:
        served = False
        while True:
            try:
                kind, *args = self.inbox.get_nowait()
            except queue.Empty:
                return served
            served = True
            if kind == "dispatch":
                self._dispatch(*args)
            elif kind == "topology":
                args[0].set_result(self._topology())
            elif kind == "health":
                args[1].set_result(self._health(args[0]))
            elif kind == "hosts":
                args[0].set_result(self._hosts())
            elif kind == "remove_host":
                args[1].set_result(self._remove_host(args[0]))
            elif kind == "rendezvous":
                self._rendezvous(*args)
            elif kind == "host_lost":
                self._host_lost(*args)

    def _dispatch(self, command: pb.Command, out: queue.SimpleQueue[Any]) -> None:
        if command.job_id in self.jobs:
            out.put(DuplicateJob(f"job {command.job_id} is already in flight"))
            return
        kind = command.targets.WhichOneof("kind")
        if kind == "all":
            share, wanted, missing = None, set(self.members.present()), set()
        else:
            ids = [command.targets.hypervisor] if kind == "hypervisor" else list(command.targets.set.ids)
            wanted = set(ids)
            missing = {hv for hv in wanted if not self.members.holds(hv)}
            share = sorted(wanted - missing)
        job = Job(command, wanted, out)
        self.jobs[command.job_id] = job
        heapq.heappush(self.deadlines, (command.deadline_ms, command.job_id))
        unknown = [self._not_held(command.job_id, hv) for hv in sorted(missing)]
        if unknown:
            self._on_replies(batch_of(unknown))
        if share is None or share:
            self._on_replies(self.subtree.dispatch(command, share))
        elif not wanted:
            self._finish(command.job_id)  # a broadcast to a tree that no host has joined yet

    def _not_held(self, job_id: str, hv: int) -> pb.Reply:
        """The answer for a hypervisor that no host holds: unknown, unless we have just started
        and its host may still be on its way back (then UNAVAILABLE, which is asked again)."""
        if hv >= self.shape.hypervisors:
            return pb.Reply(job_id=job_id, hypervisor=hv, status=pb.UNKNOWN_HYPERVISOR,
                            error=f"hypervisor {hv} is not in the tree of {self.shape.hypervisors} (job {job_id})")
        if time.monotonic() - self.started < REJOIN_GRACE_S:
            return pb.Reply(job_id=job_id, hypervisor=hv, status=pb.UNAVAILABLE, error=(
                f"unavailable: hypervisor {hv} has no host yet; the root started "
                f"{time.monotonic() - self.started:.1f} s ago and hosts are joining (job {job_id})"))
        return pb.Reply(job_id=job_id, hypervisor=hv, status=pb.UNKNOWN_HYPERVISOR,
                        error=f"hypervisor {hv} is not in the tree: no host holds it (job {job_id})")

    def _on_replies(self, batch: pb.ReplyBatch) -> None:
        """Stream each job its replies, and what it cost in tree messages; each target is answered
        once (late and duplicate ones dropped)."""
        out: dict[str, pb.ReplyBatch] = {}
        for cost in batch.messages:
            job = self.jobs.get(cost.job_id)
            if job is not None:
                job.messages += cost.count
        for entry in batch.ok:
            job = self.jobs.get(entry.job_id)
            if job is None:
                continue  # ended already (deadline)
            fresh = job.remaining.intersection(entry.hypervisors)
            job.remaining.difference_update(fresh)
            if len(fresh) == len(entry.hypervisors):
                out.setdefault(entry.job_id, pb.ReplyBatch()).ok.append(entry)
            elif fresh:
                out.setdefault(entry.job_id, pb.ReplyBatch()).ok.add(job_id=entry.job_id, hypervisors=sorted(fresh))
        for reply in batch.replies:
            job = self.jobs.get(reply.job_id)
            if job is None or reply.hypervisor not in job.remaining:
                continue
            job.remaining.discard(reply.hypervisor)
            out.setdefault(reply.job_id, pb.ReplyBatch()).replies.append(reply)
        for job_id, replies in out.items():
            job = self.jobs[job_id]
            if job.messages:  # streamed with replies: a job's last ones carry the rest of its cost
                replies.messages.add(job_id=job_id, count=job.messages)
                job.messages = 0
            job.out.put(replies)
            if not job.remaining:
                self._finish(job_id)

    def _finish(self, job_id: str) -> None:
        job = self.jobs.pop(job_id, None)
        if job is None:
            return  # finished already (its last target was answered as it was dispatched)
        job.out.put(END)
        self.subtree.forget(job_id)

    def _expire(self) -> None:
        now = procinfo.now_ms()
        while self.deadlines and self.deadlines[0][0] <= now:
            _, job_id = heapq.heappop(self.deadlines)
            job = self.jobs.get(job_id)
            if job is None:
                continue
            self._on_replies(batch_of(
                pb.Reply(job_id=job_id, hypervisor=hv, status=pb.TIMEOUT,
                         error=f"no reply before the deadline (hypervisor {hv}, job {job_id})")
                for hv in sorted(job.remaining)
            ))

    def _on_event(self, event: pb.PeerEvent) -> None:
        self.events.append(event)
        self._watch_events.append(event)
        self._next_watch = 0.0  # a leaf down or up: the streams hear of it now
        log.warning("event=%s node=[%d:%d) reason=%s", pb.PeerState.Name(event.state).lower(),
                    event.node.first_leaf, event.node.end_leaf, event.reason)

    def _feed_watch(self) -> None:
        """Pass on the reports that came up since the last pass, and, on a peer event or every
        second, which hypervisors are down and whether the tree is ready (launcher/watch.py)."""
        if self.subtree.changed:
            self.watch.offer(self.subtree.changed.values())
            self.subtree.changed.clear()
        now = time.monotonic()
        if now < self._next_watch:
            return
        self._next_watch = now + 1.0
        self.watch.set_down(self._down_hypervisors(), self._watch_events)
        self._watch_events = []
        self.watch.set_tree(bool(self.build_seconds) and self._all_present_up(), self.build_seconds)

    def _down_hypervisors(self) -> set[int]:
        """Hypervisors whose leaf a host holds but which is not OK or SLOW in our view."""
        down: set[int] = set()
        for peer in self.subtree.peers():
            node = node_range(peer.node)
            if not peer.relay and peer.state not in UP and not self.members.vacant(node):
                down.update(self.shape.hypervisors_of(node))
        return down

    def _topology(self) -> root_pb2.TopologyReply:
        return root_pb2.TopologyReply(
            hypervisors=self.shape.hypervisors, per_leaf=self.shape.per_leaf, fanout=self.shape.fanout,
            leaves=self.shape.leaves, relays=len(self.shape.relays()), depth=self.shape.depth(),
            build_seconds=self.build_seconds, ready=bool(self.build_seconds) and self._all_present_up(),
            hypervisors_present=len(self.members.present()),
        )

    def _health(self, request: root_pb2.HealthRequest) -> root_pb2.HealthReply:
        rss, pss = procinfo.memory_kib()
        me = pb.PeerStatus(node=node_id(self.shape.root), relay=True, state=pb.PEER_OK, pid=os.getpid(),
                           host=procinfo.HOSTNAME, last_heard_ms=procinfo.now_ms(), rss_kib=rss, pss_kib=pss,
                           netns=procinfo.NETNS, link_address=self.listener.address if self.listener else "")
        below = [p for p in self.subtree.peers() if not self.members.vacant(node_range(p.node))]
        ok = sum(len(self.shape.hypervisors_of(node_range(p.node))) for p in below
                 if p.state == pb.PEER_OK and not p.relay)
        peers = [me, *below]
        reply = root_pb2.HealthReply(
            peers=peers, events=list(self.events), hypervisors_ok=ok,
            rejected=self.subtree.subtree_rejected(), jobs_in_flight=len(self.jobs),
            hypervisors_present=len(self.members.present()),
        )
        if request.reports:
            reply.reports.extend(self.subtree.reports[hv] for hv in sorted(self.subtree.reports))
        return reply

    def _shutdown(self) -> None:
        log.warning("event=root_stopping reason=%s", self.stopping)
        self.watch.close()
        for job_id in list(self.jobs):
            job = self.jobs[job_id]
            self._on_replies(batch_of(
                pb.Reply(job_id=job_id, hypervisor=hv, status=pb.UNAVAILABLE,
                         error=f"unavailable: the root is stopping (hypervisor {hv}, job {job_id})")
                for hv in sorted(job.remaining)
            ))
        pids = [c.pid for c in self.subtree.children if c.pid]
        reason = f"root stopping ({self.stopping})"
        for name, sock in list(self.channels.items()):  # first, so that no host agent restarts a rank
            self._order(name, goodbye=pb.Goodbye(reason=reason))
        self.subtree.shutdown(reason)
        end = time.monotonic() + 10
        while time.monotonic() < end and any(procinfo.alive(p) for p in pids):
            time.sleep(0.05)
        if self.local_agent is not None:
            try:
                self.local_agent.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.local_agent.kill()
        if self.adopted_agent:  # not our child: it heard the goodbye, wait for it by pid
            while time.monotonic() < end and procinfo.alive(self.adopted_agent):
                time.sleep(0.05)
            if procinfo.alive(self.adopted_agent):
                os.kill(self.adopted_agent, signal.SIGKILL)
        if self.listener is not None:
            self.listener.close()

    # -- the rendezvous and the hosts (proto/README.md §10) -----------------------

    def listen(self) -> str:
        """Open the rendezvous listener; returns its address."""
        tls = rendezvous.Tls.load(self.settings.pki_dir, pki.ROOT)

        def on_frame(frame: lpb.Frame, sock: rendezvous.Conn, peer: str) -> None:
            self.submit("rendezvous", frame, sock, peer)

        remembered = self._remembered_address()
        self.listener = None
        if remembered:
            try:
                self.listener = rendezvous.Listener(remembered, on_frame, tls)
            except OSError as exc:  # taken by someone else since: a free port, and a new host agent
                log.warning("event=rendezvous_moved was=%s error=%s", remembered, exc)
        if self.listener is None:
            self.listener = rendezvous.Listener(self.settings.listen, on_frame, tls)
        if self.settings.listen.endswith(":0"):
            (self.settings.state_dir / RENDEZVOUS_FILE).write_text(self.listener.address + "\n")
        log.warning("event=rendezvous_listening address=%s", self.listener.address)
        return self.listener.address

    def _remembered_address(self) -> str:
        """The address a predecessor listened on, when ours is "any free port" on the same host."""
        host, _, port = self.settings.listen.rpartition(":")
        if port != "0":
            return ""
        try:
            address = (self.settings.state_dir / RENDEZVOUS_FILE).read_text().strip()
        except OSError:
            return ""
        return address if address.rpartition(":")[0] == host else ""

    def _start_local_agent(self) -> None:
        """The all-in-one cloud: one host agent on this machine runs every leaf."""
        assert self.listener is not None
        state_dir = self.settings.state_dir.resolve()
        predecessor = self._predecessors_agent(state_dir)
        if predecessor:
            # A root that died left its host agent and ranks running (and, with them, the
            # simulated hypervisors' VMs): that agent reconnects to us, its ranks link again.
            self.adopted_agent = predecessor
            log.warning("event=host_agent_adopted pid=%d", predecessor)
            return
        out = open(state_dir / "hostd.out", "ab")  # noqa: SIM115 - handed to the child
        self.local_agent = subprocess.Popen(
            [sys.executable, "-m", HOSTD_MODULE, "--root", self.listener.address,
             "--address", self.listener.address.rpartition(":")[0], "--leaves", "all",
             "--state-dir", str(state_dir), "--pki", str(self.settings.pki_dir.resolve())],
            # Its own session: when we die, our mpiexec ends our process group, and the host
            # agent (and through it every rank and simulated VM) must outlive us (issue 15).
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()

    def _predecessors_agent(self, state_dir: Path) -> int:
        """The pid of a local host agent a previous root started here, if it still runs and
        reaches our rendezvous; 0 otherwise (one that reaches another address is stopped)."""
        assert self.listener is not None
        pid, argv = procinfo.local_host_agent(state_dir)
        if not pid:
            return 0
        if "--root" in argv and argv[argv.index("--root") + 1:][:1] == [self.listener.address]:
            return pid
        log.warning("event=host_agent_stopped pid=%d reason=it reaches another rendezvous", pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)  # it stops its ranks; we start a host agent of our own
        return 0

    def _rendezvous(self, frame: lpb.Frame, sock: rendezvous.Conn, peer: str) -> None:
        kind = frame.WhichOneof("body")
        if kind == "locate":
            answer = self._locate(frame.locate)
            try:
                rendezvous.send(sock, located=answer)
            except OSError:
                pass
            sock.close()
        elif kind == "link":
            self.subtree.attach(frame.link, sock)
        elif kind == "host_hello":
            self._host_hello(frame.host_hello, sock, peer)
        else:
            log.warning("event=rendezvous_rejected peer=%s kind=%s", peer, kind)
            sock.close()

    def _locate(self, request: lpb.LocateRequest) -> lpb.LocateAnswer:
        node = node_range(request.node)
        try:
            parent = self.shape.parent_of(node)
        except UnknownHypervisor as exc:
            return lpb.LocateAnswer(refused=True, reason=str(exc))
        owner = self.members.host_of(node)
        if request.host and owner and owner != request.host:
            return lpb.LocateAnswer(refused=True, reason=f"{node} runs on host {owner}, not {request.host}")
        if not owner and request.host and request.host not in self.members.hosts:
            # Its host agent has not (re)joined yet: after a root's restart ranks ask before
            # their agent is back. Stale or not, the agent decides when it joins (§10.2).
            return lpb.LocateAnswer(reason=f"host {request.host} has not joined this root yet")
        if not owner:
            return lpb.LocateAnswer(refused=True, reason=f"no host holds {node}")
        answer = lpb.LocateAnswer(parent=node_id(parent))
        if parent == self.shape.root:
            assert self.listener is not None
            answer.address = self.listener.address
            return answer
        status = self._peer_view().get(parent)
        if status is not None and status.state in UP and status.link_address:
            answer.address = status.link_address
        else:
            answer.reason = f"{parent} is not up yet"
        return answer

    def _peer_view(self) -> dict[NodeRange, pb.PeerStatus]:
        """Every rank below us as we last heard of it, refreshed at most 10 times a second."""
        now = time.monotonic()
        if now - self._view_at > 0.1:
            self._view = {node_range(p.node): p for p in self.subtree.peers()}
            self._view_at = now
        return self._view

    def _all_present_up(self) -> bool:
        """Every leaf a host holds is up, and so are the root's children that hold one."""
        if not self.members.owner:
            return False
        view = self._peer_view() if self.build_seconds else {
            node_range(p.node): p for p in self.subtree.peers()}
        for leaf in self.members.owner:
            status = view.get(NodeRange(leaf, leaf + 1))
            if status is None or status.state not in UP:
                return False
        return True

    def _host_hello(self, hello: lpb.HostHello, sock: rendezvous.Conn, peer: str) -> None:
        try:
            leaves = self.members.join(hello.host, hello.address, hello.leaves, list(hello.held), hello.pid)
        except Conflict as exc:
            log.error("event=host_refused host=%s reason=%s", hello.host, exc)
            try:
                rendezvous.send(sock, welcome=lpb.HostWelcome(refused=True, reason=str(exc)))
            except OSError:
                pass
            sock.close()
            return
        old = self.channels.pop(hello.host, None)
        if old is not None:
            old.close()
        self.channels[hello.host] = sock
        orders = self.members.plan()
        host = self.members.hosts[hello.host]
        try:
            rendezvous.send(sock, welcome=lpb.HostWelcome(leaves=leaves, run=[node_id(n) for n in sorted(host.ranks)]))
        except OSError as exc:
            self._host_lost(hello.host, sock, f"welcome not sent: {exc}")
            return
        log.warning("event=host_joined host=%s address=%s leaves=%s pid=%d", hello.host, hello.address,
                    _ranges(leaves), hello.pid)
        self._send_orders([o for o in orders if o[0] != hello.host])
        threading.Thread(target=self._read_channel, args=(hello.host, sock), name=f"host-{hello.host}",
                         daemon=True).start()

    def _host_info(self, name: str) -> root_pb2.HostInfo:
        host = self.members.hosts[name]
        ids = sorted(hv for leaf in host.leaves for hv in self.shape.hypervisors_of(NodeRange(leaf, leaf + 1)))
        relays = sorted(n for n, h in self.members.placed.items() if h == name)
        return root_pb2.HostInfo(name=name, address=host.address, leaves=host.leaves, hypervisors=ids,
                                 connected=name in self.channels, pid=host.pid,
                                 relays=[node_id(n) for n in relays])

    def _hosts(self) -> root_pb2.HostsReply:
        return root_pb2.HostsReply(hosts=[self._host_info(n) for n in sorted(self.members.hosts)],
                                   listen=self.listener.address if self.listener else "")

    def _remove_host(self, name: str) -> root_pb2.HostInfo | None:
        """Forget ``name``: its agent stops its ranks, its slots go back to the free pool."""
        if name not in self.members.hosts:
            return None
        info = self._host_info(name)
        self._order(name, goodbye=pb.Goodbye(reason="removed from the tree"))
        sock = self.channels.pop(name, None)
        if sock is not None:
            sock.close()
        self.members.remove(name)
        for leaf in info.leaves:  # its ranks leave: answer what they owe now, not at their silence
            child = self._leaf_child(leaf)
            if child is not None and child.link is not None:
                self.subtree.drop(child, f"host {name} removed")
        self._send_orders(self.members.plan())
        log.warning("event=host_removed host=%s leaves=%s", name, _ranges(list(info.leaves)))
        return info

    def _leaf_child(self, leaf: int) -> Any:
        return next((c for c in self.subtree.children if c.node == NodeRange(leaf, leaf + 1)), None)

    def _read_channel(self, name: str, sock: rendezvous.Conn) -> None:
        """On its own thread: a host agent's pings; silence or an error means the host is lost."""
        sock.settimeout(5.0)
        while True:
            try:
                frame = rendezvous.receive(sock, f"host {name}")
            except (OSError, WireError) as exc:
                self.submit("host_lost", name, sock, str(exc) or type(exc).__name__)
                return
            if frame.WhichOneof("body") == "goodbye":
                self.submit("host_lost", name, sock, f"said goodbye: {frame.goodbye.reason}")
                return

    def _host_lost(self, name: str, sock: rendezvous.Conn, reason: str) -> None:
        if self.channels.get(name) is not sock:
            return  # an older channel of a host that has reconnected since
        del self.channels[name]
        sock.close()
        log.warning("event=host_lost host=%s reason=%s", name, reason)
        self.members.disconnect(name)
        self._send_orders(self.members.plan())

    def _send_orders(self, orders: list[tuple[str, str, NodeRange]]) -> None:
        for name, what, node in orders:
            if what == "run":
                self._order(name, run=lpb.RunRank(node=node_id(node)))
            else:
                self._order(name, stop=lpb.StopRank(node=node_id(node), reason="placed on another host"))

    def _order(self, name: str, **body: Any) -> None:
        sock = self.channels.get(name)
        if sock is None:
            return
        try:
            rendezvous.send(sock, **body)
        except OSError as exc:
            self._host_lost(name, sock, f"order not sent: {exc}")


def _ranges(leaves: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5': a host of the all-in-one cloud holds thousands."""
    out: list[str] = []
    for leaf in leaves:
        if out and leaf == int(out[-1].rsplit("-", 1)[-1]) + 1:
            out[-1] = f"{out[-1].split('-')[0]}-{leaf}"
        else:
            out.append(str(leaf))
    return ",".join(out)
