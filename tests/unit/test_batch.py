"""When a rank sends its buffered replies up (launcher/batch.py, proto/README.md §3)."""

from __future__ import annotations

import time

import pytest

from cloudland_launcher.batch import MAX_BATCH, ReplyBuffer
from cloudland_proto.v1 import envelope_pb2 as pb

LONG = 3600.0  # a linger that never passes during a test


def replies(job_id: str, *hypervisors: int) -> list[pb.Reply]:
    return [pb.Reply(job_id=job_id, hypervisor=hv, status=pb.OK) for hv in hypervisors]


def pending_from(counts: dict[str, int]):
    return lambda job: counts.get(job, 0)


def test_empty_is_never_due() -> None:
    buffer = ReplyBuffer(linger=0.0)
    assert len(buffer) == 0
    assert not buffer.due(pending_from({}))


@pytest.mark.parametrize(
    ("buffered", "pending", "due"),
    [
        ({"a": [1]}, {}, True),
        ({"a": [1, 2], "b": [3]}, {"a": 0, "b": 0}, True),
        ({"a": [1]}, {"a": 1}, False),
        ({"a": [1], "b": [2]}, {"b": 4}, False),
        ({"a": [1], "b": [2]}, {"a": 0, "b": 1}, False),
        ({"a": [1]}, {"other": 5}, True),  # jobs not in the buffer do not hold it
    ],
)
def test_due_when_no_buffered_job_has_pending(
    buffered: dict[str, list[int]], pending: dict[str, int], due: bool
) -> None:
    buffer = ReplyBuffer(linger=LONG)
    for job, hvs in buffered.items():
        buffer.add(replies(job, *hvs))
    assert buffer.due(pending_from(pending)) is due


def test_due_after_linger_even_with_pending() -> None:
    buffer = ReplyBuffer(linger=0.05)
    buffer.add(replies("a", 1))
    assert not buffer.due(pending_from({"a": 1}))
    time.sleep(0.1)
    assert buffer.due(pending_from({"a": 1}))


def test_linger_counts_from_the_oldest_reply() -> None:
    buffer = ReplyBuffer(linger=0.05)
    buffer.add(replies("a", 1))
    time.sleep(0.1)
    buffer.add(replies("a", 2))  # a fresh reply does not restart the clock
    assert buffer.due(pending_from({"a": 1}))


def test_linger_restarts_after_take() -> None:
    buffer = ReplyBuffer(linger=0.05)
    buffer.add(replies("a", 1))
    time.sleep(0.1)
    buffer.take()
    buffer.add(replies("a", 2))
    assert not buffer.due(pending_from({"a": 1}))


def test_zero_linger_is_due_at_once() -> None:
    buffer = ReplyBuffer(linger=0.0)
    buffer.add(replies("a", 1))
    assert buffer.due(pending_from({"a": 1}))


@pytest.mark.parametrize(("size", "due"), [(MAX_BATCH - 1, False), (MAX_BATCH, True)])
def test_due_at_max_batch(size: int, due: bool) -> None:
    buffer = ReplyBuffer(linger=LONG)
    buffer.add(replies("a", *range(size)))
    assert buffer.due(pending_from({"a": 1})) is due


def test_take_empties_and_counts() -> None:
    buffer = ReplyBuffer(linger=LONG)
    buffer.add(replies("a", 1, 2))
    buffer.add(replies("b", 3))
    batch = buffer.take()
    assert [(r.job_id, r.hypervisor) for r in batch.replies] == [("a", 1), ("a", 2), ("b", 3)]
    assert len(buffer) == 0
    assert not buffer.due(pending_from({}))
    assert (buffer.batches_sent, buffer.replies_sent) == (1, 3)

    buffer.add(replies("c", 4))
    assert buffer.due(pending_from({"a": 9, "b": 9}))  # the jobs of the last batch are forgotten
    assert len(buffer.take().replies) == 1
    assert (buffer.batches_sent, buffer.replies_sent) == (2, 4)
