"""Observed state as a stream: the root's side of ``Watch`` (proto/README.md §8.1).

The root's loop ``offer``s the reports its children sent up and says which hypervisors are
down and whether the tree is ready; gRPC threads each hold a ``Subscriber`` and ``take`` what
it has not seen. Reports are whole (every VM of a hypervisor), so what a subscriber has not
taken yet is coalesced per hypervisor: a slow subscriber costs one report per hypervisor at
most, never a backlog, and skipping generations loses nothing.

- A subscriber starts with a snapshot: every report whose version (incarnation, generation) is
  not the one it says it holds (``known``: what it had before a reconnect), the ids of every
  hypervisor reported, and the down ones.
- Then changes: a report is passed on when its hypervisor's incarnation is new (the agent
  started again, or joined) or its generation is newer; older or equal ones are stale copies
  (a relay re-sending its subtree's inventory after a relink) and are dropped.
- A new snapshot follows when the tree becomes ready or is built again: only then is the
  reported set whole, which is what lets a subscriber call a missing hypervisor gone.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Mapping

from cloudland.client import supersedes
from cloudland_proto.v1 import envelope_pb2 as pb
from cloudland_proto.v1 import root_pb2

MAX_EVENTS = 1000  # peer events held per subscriber; older ones are dropped (they only inform)
Version = tuple[str, int]


def version(report: pb.HypervisorReport) -> Version:
    return report.incarnation, report.generation


class Subscriber:
    """One Watch stream: what it has not taken yet. Guarded by the hub's lock."""

    def __init__(self, known: Mapping[int, Version]) -> None:
        self.sent: dict[int, Version] = dict(known)
        self.snapshot_due = True
        self.reports: dict[int, pb.HypervisorReport] = {}
        self.down: set[int] = set()
        self.up: set[int] = set()
        self.events: deque[pb.PeerEvent] = deque(maxlen=MAX_EVENTS)
        self.closed = False


class WatchHub:
    """Thread-safe: the root's loop offers, each Watch stream's thread takes."""

    def __init__(self) -> None:
        self.reports: dict[int, pb.HypervisorReport] = {}
        self.down: set[int] = set()
        self.ready = False
        self.build_seconds = 0.0
        self._subscribers: set[Subscriber] = set()
        self._changed = threading.Condition(threading.Lock())

    # -- the root's loop ------------------------------------------------------

    def offer(self, reports: Iterable[pb.HypervisorReport]) -> int:
        """Take reports from the tree; returns how many were news (the rest were stale)."""
        news = 0
        with self._changed:
            for report in reports:
                hv = report.hypervisor
                if not supersedes(report, self.reports.get(hv)):
                    continue
                self.reports[hv] = report
                news += 1
                for sub in self._subscribers:
                    sub.reports[hv] = report
            if news:
                self._changed.notify_all()
        return news

    def set_down(self, down: set[int], events: Iterable[pb.PeerEvent] = ()) -> None:
        """The hypervisors whose leaf is not up now, and the peer events since the last call."""
        events = list(events)
        with self._changed:
            went_down, came_up = down - self.down, self.down - down
            if not (went_down or came_up or events):
                return
            self.down = set(down)
            for sub in self._subscribers:
                sub.up.difference_update(went_down)
                sub.down.update(went_down)
                sub.down.difference_update(came_up)
                sub.up.update(came_up)
                sub.events.extend(events)
            self._changed.notify_all()

    def set_tree(self, ready: bool, build_seconds: float) -> None:
        """Whether every leaf a host holds is up (Topology.ready); becoming ready, or built again,
        sends every subscriber a snapshot: its reported set is whole now."""
        with self._changed:
            if (ready, build_seconds) == (self.ready, self.build_seconds):
                return
            fresh = ready and (not self.ready or build_seconds != self.build_seconds)
            self.ready, self.build_seconds = ready, build_seconds
            if fresh:
                for sub in self._subscribers:
                    sub.snapshot_due = True
                self._changed.notify_all()

    def close(self) -> None:
        """The root is stopping: every stream ends."""
        with self._changed:
            for sub in self._subscribers:
                sub.closed = True
            self._changed.notify_all()

    # -- the Watch streams ----------------------------------------------------

    def subscribe(self, known: Mapping[int, Version] | None = None) -> Subscriber:
        sub = Subscriber(known or {})
        with self._changed:
            self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        with self._changed:
            self._subscribers.discard(sub)

    def take(self, sub: Subscriber, timeout: float) -> root_pb2.WatchEvent | None:
        """What ``sub`` has not seen, waiting up to ``timeout``; None if nothing (or closed)."""
        with self._changed:
            if not self._pending(sub):
                self._changed.wait_for(lambda: self._pending(sub), timeout)
            if sub.closed or not self._pending(sub):
                return None
            return self._snapshot(sub) if sub.snapshot_due else self._change(sub)

    @staticmethod
    def _pending(sub: Subscriber) -> bool:
        return bool(sub.closed or sub.snapshot_due or sub.reports or sub.down or sub.up or sub.events)

    def _snapshot(self, sub: Subscriber) -> root_pb2.WatchEvent:
        event = root_pb2.WatchEvent(snapshot=True, reported=sorted(self.reports), down=sorted(self.down),
                                    ready=self.ready, build_seconds=self.build_seconds, events=list(sub.events))
        event.reports.extend(r for hv, r in sorted(self.reports.items()) if sub.sent.get(hv) != version(r))
        sub.sent.update((r.hypervisor, version(r)) for r in event.reports)
        sub.snapshot_due = False
        sub.reports.clear()
        sub.down.clear()
        sub.up.clear()
        sub.events.clear()
        return event

    def _change(self, sub: Subscriber) -> root_pb2.WatchEvent:
        event = root_pb2.WatchEvent(down=sorted(sub.down), up=sorted(sub.up), events=list(sub.events))
        event.reports.extend(r for _, r in sorted(sub.reports.items()))
        sub.sent.update((r.hypervisor, version(r)) for r in event.reports)
        sub.reports.clear()
        sub.down.clear()
        sub.up.clear()
        sub.events.clear()
        return event
