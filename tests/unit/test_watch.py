"""The root's side of Watch (launcher/watch.py): a snapshot first, then changes; a snapshot of
what a subscriber lacks when it comes back having missed generations, or when a hypervisor
joins again under a new incarnation; stale copies dropped."""

from __future__ import annotations

from cloudland_launcher.watch import WatchHub
from cloudland_proto.v1 import envelope_pb2 as pb


def report(hv: int, generation: int, incarnation: str = "a", *vms: str) -> pb.HypervisorReport:
    return pb.HypervisorReport(hypervisor=hv, incarnation=incarnation, generation=generation,
                               vms=[pb.VmState(name=f"cl-{u}", uuid=u, state="running") for u in vms])


def versions(event: object) -> list[tuple[int, str, int]]:
    return [(r.hypervisor, r.incarnation, r.generation) for r in event.reports]  # type: ignore[attr-defined]


def test_a_subscriber_gets_a_snapshot_then_only_changes() -> None:
    hub = WatchHub()
    hub.offer([report(0, 1), report(1, 1)])
    hub.set_down({1})
    hub.set_tree(True, 2.0)
    sub = hub.subscribe()
    first = hub.take(sub, 0)
    assert first is not None and first.snapshot and first.ready
    assert (versions(first), list(first.reported), list(first.down)) == ([(0, "a", 1), (1, "a", 1)], [0, 1], [1])
    assert hub.take(sub, 0) is None  # nothing new
    hub.offer([report(0, 2, "a", "u1")])
    hub.set_down(set())
    change = hub.take(sub, 0)
    assert change is not None and not change.snapshot
    assert (versions(change), list(change.down), list(change.up)) == ([(0, "a", 2)], [], [1])


def test_changes_a_subscriber_has_not_taken_are_coalesced_per_hypervisor() -> None:
    hub = WatchHub()
    sub = hub.subscribe()
    hub.take(sub, 0)  # the (empty) snapshot
    for generation in range(1, 50):
        hub.offer([report(3, generation)])
    hub.set_down({3})
    hub.set_down(set())  # down and up again before it looked: it is up
    change = hub.take(sub, 0)
    assert change is not None
    assert (versions(change), list(change.down), list(change.up)) == ([(3, "a", 49)], [], [3])


def test_stale_and_duplicate_reports_are_dropped() -> None:
    hub = WatchHub()
    sub = hub.subscribe()
    hub.take(sub, 0)
    assert hub.offer([report(0, 5)]) == 1
    # A relay relinking sends its subtree's inventory again: older or equal generations are no news.
    assert hub.offer([report(0, 5), report(0, 4)]) == 0
    change = hub.take(sub, 0)
    assert change is not None and versions(change) == [(0, "a", 5)]
    assert hub.take(sub, 0) is None


def test_missed_generations_are_made_up_by_the_snapshot_on_resubscribing() -> None:
    """A subscriber that reconnects says what it holds: the snapshot carries only what it missed,
    and still names every hypervisor reported."""
    hub = WatchHub()
    hub.offer([report(0, 3), report(1, 7), report(2, 1)])
    sub = hub.subscribe({0: ("a", 3), 1: ("a", 5), 2: ("a", 1)})  # it missed generations 6 and 7 of 1
    snapshot = hub.take(sub, 0)
    assert snapshot is not None and snapshot.snapshot
    assert versions(snapshot) == [(1, "a", 7)]
    assert list(snapshot.reported) == [0, 1, 2]


def test_a_hypervisor_joining_again_under_a_new_incarnation_is_passed_on_whole() -> None:
    """A restarted agent counts generations from 1 again: its report wins all the same."""
    hub = WatchHub()
    hub.offer([report(0, 9, "old", "u1", "u2")])
    sub = hub.subscribe()
    hub.take(sub, 0)
    assert hub.offer([report(0, 1, "new")]) == 1
    change = hub.take(sub, 0)
    assert change is not None and versions(change) == [(0, "new", 1)] and not change.reports[0].vms
    # and a subscriber coming back with the old incarnation gets the new one in its snapshot
    again = hub.subscribe({0: ("old", 9)})
    snapshot = hub.take(again, 0)
    assert snapshot is not None and versions(snapshot) == [(0, "new", 1)]


def test_the_tree_becoming_ready_sends_a_snapshot_of_what_changed_only() -> None:
    hub = WatchHub()
    hub.offer([report(0, 1)])
    sub = hub.subscribe()
    first = hub.take(sub, 0)
    assert first is not None and first.snapshot and not first.ready
    hub.offer([report(1, 1)])
    hub.set_tree(True, 3.0)
    ready = hub.take(sub, 0)
    assert ready is not None and ready.snapshot and ready.ready and ready.build_seconds == 3.0
    assert versions(ready) == [(1, "a", 1)] and list(ready.reported) == [0, 1]
    hub.set_tree(True, 3.0)  # no news
    assert hub.take(sub, 0) is None


def test_closing_the_hub_ends_every_stream() -> None:
    hub = WatchHub()
    sub = hub.subscribe()
    hub.take(sub, 0)
    hub.close()
    assert sub.closed and hub.take(sub, 5) is None
