"""The reconciler's keyed work queue: each key at most once queued and once in progress."""

from __future__ import annotations

import threading
import time

from cloudland_api.reconcile.queue import WorkQueue


def test_a_key_added_twice_before_it_is_taken_is_synced_once() -> None:
    queue = WorkQueue()
    queue.add_all([("instance", 1), ("instance", 2), ("instance", 1)])
    assert queue.take(10, 0.1) == [("instance", 1), ("instance", 2)]
    assert queue.take(10, 0.05) == []


def test_a_key_added_while_in_progress_runs_once_more_after_it_is_done() -> None:
    queue = WorkQueue()
    queue.add("a")
    assert queue.take(10, 0.1) == ["a"]
    queue.add("a")
    queue.add("a")
    assert queue.take(10, 0.05) == []  # never twice at once
    queue.done(["a"])
    assert queue.take(10, 0.1) == ["a"]
    queue.done(["a"])
    assert queue.take(10, 0.05) == []


def test_retry_backs_off_per_key_and_forget_resets_it() -> None:
    queue = WorkQueue(base_delay_s=0.05, max_delay_s=0.2)
    assert [queue.retry("k") for _ in range(4)] == [0.05, 0.1, 0.2, 0.2]
    queue.forget("k")
    assert queue.retry("k") == 0.05
    assert queue.take(10, 2.0) == ["k"]  # the retries of one key collapse into one sync


def test_take_waits_for_a_delayed_key_and_no_longer() -> None:
    queue = WorkQueue()
    queue.add_after("late", 0.2)
    assert queue.take(10, 0.01) == []
    started = time.monotonic()
    assert queue.take(10, 5.0) == ["late"]
    assert time.monotonic() - started < 4.0  # woke for the key, not at the timeout


def test_take_wakes_when_a_key_is_added_from_another_thread() -> None:
    queue = WorkQueue()
    threading.Timer(0.1, queue.add, args=("x",)).start()
    assert queue.take(10, 10.0) == ["x"]


def test_take_returns_at_most_limit_keys() -> None:
    queue = WorkQueue()
    queue.add_all(range(5))
    assert queue.take(3, 0.1) == [0, 1, 2]
    assert queue.take(3, 0.1) == [3, 4]
