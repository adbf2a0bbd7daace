"""The root rank: owns the job table, routes commands into the tree, answers gRPC.

The MPI loop runs on the main thread. gRPC handlers never touch MPI: they put
requests on ``inbox`` and ring the loop's doorbell; the loop answers through
per-job queues (Dispatch) or futures (Topology, Health).
"""

from __future__ import annotations

import heapq
import logging
import os
import queue
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from cloudland import procinfo
from cloudland.config import TreeSettings
from cloudland.topology import Shape
from cloudland_launcher.batch import batch_of
from cloudland_launcher.link import Backoff
from cloudland_launcher.subtree import Subtree, node_id, node_range
from cloudland_proto.v1 import envelope_pb2 as pb
from cloudland_proto.v1 import root_pb2

log = logging.getLogger(__name__)

END = None  # marks the end of a job's reply stream


class DuplicateJob(Exception):
    """Raised (to the gRPC handler) when a job id is already in flight."""


@dataclass
class Job:
    command: pb.Command
    remaining: set[int]
    out: queue.SimpleQueue[Any]


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
            leaf_command=[sys.executable, "-m", "cloudland_agents.leaf"],
            relay_command=[sys.executable, "-m", "cloudland_launcher.relay"],
        )
        assign.agent.update({
            "driver": settings.driver, "libvirt_uri": settings.libvirt_uri, "vnc_listen": settings.vnc_listen,
            "state_dir": str(settings.state_dir.resolve()), "test_ops": settings.test_ops,
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

    # -- called from gRPC threads ---------------------------------------------

    def submit(self, kind: str, *args: Any) -> None:
        self.inbox.put((kind, *args))
        self.backoff.notify()

    # -- the loop (main thread) -----------------------------------------------

    def run(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self._stop("SIGTERM"))
        signal.signal(signal.SIGINT, lambda *_: self._stop("SIGINT"))
        self.subtree.start()
        while not self.stopping:
            started = time.monotonic()
            active = self._serve_inbox()
            active |= self.subtree.poll()
            self.subtree.check()
            self._expire()
            if time.monotonic() >= self._next_ceiling:
                self._next_ceiling = time.monotonic() + 1.0
                self.backoff.set_ceiling(self.subtree.all_local())
            if not self.build_seconds and self.subtree.all_up():
                self.build_seconds = time.monotonic() - self.started
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

    def _dispatch(self, command: pb.Command, out: queue.SimpleQueue[Any]) -> None:
        if command.job_id in self.jobs:
            out.put(DuplicateJob(f"job {command.job_id} is already in flight"))
            return
        kind = command.targets.WhichOneof("kind")
        if kind == "all":
            share, wanted = None, set(range(self.shape.hypervisors))
        else:
            ids = [command.targets.hypervisor] if kind == "hypervisor" else list(command.targets.set.ids)
            wanted = set(ids)
            share = sorted(hv for hv in wanted if hv < self.shape.hypervisors)
        job = Job(command, wanted, out)
        self.jobs[command.job_id] = job
        heapq.heappush(self.deadlines, (command.deadline_ms, command.job_id))
        unknown = [
            pb.Reply(job_id=command.job_id, hypervisor=hv, status=pb.UNKNOWN_HYPERVISOR,
                     error=f"hypervisor {hv} is not in the tree of {self.shape.hypervisors} (job {command.job_id})")
            for hv in sorted(wanted) if hv >= self.shape.hypervisors
        ]
        if unknown:
            self._on_replies(batch_of(unknown))
        if share is None or share:
            self._on_replies(self.subtree.dispatch(command, share))

    def _on_replies(self, batch: pb.ReplyBatch) -> None:
        """Stream each job its replies; each target is answered once (late and duplicate ones dropped)."""
        out: dict[str, pb.ReplyBatch] = {}
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
            job.out.put(replies)
            if not job.remaining:
                self._finish(job_id)

    def _finish(self, job_id: str) -> None:
        job = self.jobs.pop(job_id)
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
        log.warning("event=%s node=[%d:%d) reason=%s", pb.PeerState.Name(event.state).lower(),
                    event.node.first_leaf, event.node.end_leaf, event.reason)

    def _topology(self) -> root_pb2.TopologyReply:
        return root_pb2.TopologyReply(
            hypervisors=self.shape.hypervisors, per_leaf=self.shape.per_leaf, fanout=self.shape.fanout,
            leaves=self.shape.leaves, relays=len(self.shape.relays()), depth=self.shape.depth(),
            build_seconds=self.build_seconds, ready=bool(self.build_seconds) and self.subtree.all_up(),
        )

    def _health(self, request: root_pb2.HealthRequest) -> root_pb2.HealthReply:
        rss, pss = procinfo.memory_kib()
        me = pb.PeerStatus(node=node_id(self.shape.root), relay=True, state=pb.PEER_OK, pid=os.getpid(),
                           host=procinfo.HOSTNAME, last_heard_ms=procinfo.now_ms(), rss_kib=rss, pss_kib=pss)
        below = self.subtree.peers()
        ok = sum(len(self.shape.hypervisors_of(node_range(p.node))) for p in below
                 if p.state == pb.PEER_OK and not p.relay)
        peers = [me, *below]
        reply = root_pb2.HealthReply(
            peers=peers, events=list(self.events), hypervisors_ok=ok,
            rejected=self.subtree.subtree_rejected(), jobs_in_flight=len(self.jobs),
        )
        if request.reports:
            reply.reports.extend(self.subtree.reports[hv] for hv in sorted(self.subtree.reports))
        return reply

    def _shutdown(self) -> None:
        log.warning("event=root_stopping reason=%s", self.stopping)
        for job_id in list(self.jobs):
            job = self.jobs[job_id]
            self._on_replies(batch_of(
                pb.Reply(job_id=job_id, hypervisor=hv, status=pb.UNAVAILABLE,
                         error=f"unavailable: the root is stopping (hypervisor {hv}, job {job_id})")
                for hv in sorted(job.remaining)
            ))
        pids = [c.pid for c in self.subtree.children if c.pid]
        self.subtree.shutdown(f"root stopping ({self.stopping})")
        end = time.monotonic() + 10
        while time.monotonic() < end and any(procinfo.alive(p) for p in pids):
            time.sleep(0.05)
