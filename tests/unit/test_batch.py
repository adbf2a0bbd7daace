"""When a rank sends its buffered replies up (launcher/batch.py, proto/README.md §3)."""

from __future__ import annotations

import time

import pytest

from cloudland_launcher.batch import MAX_BATCH, ReplyBuffer, batch_of, size
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
        buffer.add(batch_of(replies(job, *hvs)))
    assert buffer.due(pending_from(pending)) is due


def test_due_after_linger_even_with_pending() -> None:
    buffer = ReplyBuffer(linger=0.05)
    buffer.add(batch_of(replies("a", 1)))
    assert not buffer.due(pending_from({"a": 1}))
    time.sleep(0.1)
    assert buffer.due(pending_from({"a": 1}))


def test_linger_counts_from_the_oldest_reply() -> None:
    buffer = ReplyBuffer(linger=0.05)
    buffer.add(batch_of(replies("a", 1)))
    time.sleep(0.1)
    buffer.add(batch_of(replies("a", 2)))  # a fresh reply does not restart the clock
    assert buffer.due(pending_from({"a": 1}))


def test_linger_restarts_after_take() -> None:
    buffer = ReplyBuffer(linger=0.05)
    buffer.add(batch_of(replies("a", 1)))
    time.sleep(0.1)
    buffer.take()
    buffer.add(batch_of(replies("a", 2)))
    assert not buffer.due(pending_from({"a": 1}))


def test_zero_linger_is_due_at_once() -> None:
    buffer = ReplyBuffer(linger=0.0)
    buffer.add(batch_of(replies("a", 1)))
    assert buffer.due(pending_from({"a": 1}))


@pytest.mark.parametrize(("size", "due"), [(MAX_BATCH - 1, False), (MAX_BATCH, True)])
def test_due_at_max_batch(size: int, due: bool) -> None:
    buffer = ReplyBuffer(linger=LONG)
    buffer.add(batch_of(replies("a", *range(size))))
    assert buffer.due(pending_from({"a": 1})) is due


def test_take_empties_and_counts() -> None:
    buffer = ReplyBuffer(linger=LONG)
    buffer.add(batch_of(replies("a", 1, 2)))
    buffer.add(batch_of(replies("b", 3)))
    batch = buffer.take()
    assert [(r.job_id, r.hypervisor) for r in batch.replies] == [("a", 1), ("a", 2), ("b", 3)]
    assert len(buffer) == 0
    assert not buffer.due(pending_from({}))
    assert (buffer.batches_sent, buffer.replies_sent) == (1, 3)

    buffer.add(batch_of(replies("c", 4)))
    assert buffer.due(pending_from({"a": 9, "b": 9}))  # the jobs of the last batch are forgotten
    assert len(buffer.take().replies) == 1
    assert (buffer.batches_sent, buffer.replies_sent) == (2, 4)


def test_compact_ok_replies_merge_per_job_and_count() -> None:
    buffer = ReplyBuffer(linger=10)
    buffer.add_ok("a", 1)
    compact = pb.ReplyBatch()
    compact.ok.add(job_id="a", hypervisors=[2, 3])
    compact.ok.add(job_id="b", hypervisors=[4])
    buffer.add(compact)
    buffer.add_reply(pb.Reply(job_id="b", hypervisor=5, status=pb.FAILED, error="x"))
    assert len(buffer) == 5
    assert not buffer.due(pending_from({"a": 0, "b": 1}))
    assert buffer.due(pending_from({"a": 0, "b": 0}))
    batch = buffer.take()
    assert {e.job_id: list(e.hypervisors) for e in batch.ok} == {"a": [1, 2, 3], "b": [4]}
    assert [r.hypervisor for r in batch.replies] == [5]
    assert size(batch) == 5 and buffer.replies_sent == 5 and len(buffer) == 0


def test_compact_form_is_smaller_on_the_wire() -> None:
    full = batch_of(pb.Reply(job_id="j" * 32, hypervisor=h, status=pb.OK) for h in range(1000))
    compact = pb.ReplyBatch()
    compact.ok.add(job_id="j" * 32, hypervisors=range(1000))
    assert size(full) == size(compact) == 1000
    assert len(compact.SerializeToString()) * 10 < len(full.SerializeToString())


def test_a_batch_counts_what_its_jobs_cost_below_and_itself() -> None:
    buffer = ReplyBuffer(linger=LONG)
    sent_down = pb.ReplyBatch(messages=[pb.JobMessages(job_id="a", count=3)])  # a relay's copies, no reply yet
    buffer.add(sent_down)
    assert len(buffer) == 0 and not buffer.due(pending_from({}))  # a cost alone is never sent
    from_child = batch_of(replies("a", 1))
    from_child.messages.add(job_id="a", count=2)
    buffer.add(from_child)
    buffer.add_ok("b", 7)
    taken = buffer.take()
    assert {m.job_id: m.count for m in taken.messages} == {"a": 3 + 2 + 1, "b": 1}
    buffer.add_ok("a", 2)
    assert {m.job_id: m.count for m in buffer.take().messages} == {"a": 1}  # reported once, then only new
