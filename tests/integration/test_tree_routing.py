"""Routing through real trees: unicast, multicast and broadcast reach exactly their targets.

Each hypervisor counts its executions of ``test.count`` per key, so a command
that ran twice, or on a hypervisor it was not sent to, shows in the counts.
"""

from __future__ import annotations

import random
import time
import uuid

import pytest

from cloudland import operations
from cloudland.client import ALL
from cloudland_proto.v1 import diag_pb2 as diag
from cloudland_proto.v1 import envelope_pb2 as pb
from cloudland_launcher.harness import start_tree, stop_tree

# (hypervisors, per_leaf, fanout): the sizes at fan-out 32. 1,025 hypervisors
# run 32 to a leaf rank (33 leaves under one relay plus one leaf) to stay within this
# machine; 9 at fan-out 2 is a real three-relay-deep tree.
SHAPES = [(1, 1, 32), (31, 1, 32), (32, 1, 32), (33, 1, 32), (1025, 32, 32), (9, 1, 2)]


@pytest.fixture(scope="module", params=SHAPES, ids=lambda s: f"{s[0]}hv-{s[1]}perleaf-k{s[2]}")
def tree(request, tmp_path_factory):
    hypervisors, per_leaf, fanout = request.param
    tree = start_tree(tmp_path_factory.mktemp("tree"), hypervisors, per_leaf, fanout)
    yield tree
    stop_tree(tree)


def counts(tree, key: str, targets=ALL) -> dict[int, int]:
    replies = tree.client.run("test.count", targets, request=diag.TestCountRequest(key=key), timeout=30)
    ids = [r.hypervisor for r in replies]
    assert len(ids) == len(set(ids)), "a hypervisor answered twice"
    assert all(r.status == pb.OK for r in replies), [r.error for r in replies if r.status != pb.OK][:3]
    return {r.hypervisor: operations.result_of(r, "test.count").count for r in replies}


def test_broadcast_reaches_every_hypervisor_exactly_once(tree):
    key = uuid.uuid4().hex
    assert counts(tree, key) == {hv: 1 for hv in range(tree.hypervisors)}
    assert counts(tree, key) == {hv: 2 for hv in range(tree.hypervisors)}


def test_unicast_reaches_exactly_its_target(tree):
    rng = random.Random(7)
    n = tree.hypervisors
    targets = sorted({0, n - 1, *rng.sample(range(n), min(n, 3))})
    for target in targets:
        key = uuid.uuid4().hex
        assert counts(tree, key, target) == {target: 1}
        after = counts(tree, key)  # a broadcast of the same key: only the target ran it before
        assert after == {hv: 2 if hv == target else 1 for hv in range(n)}


def test_multicast_reaches_exactly_its_set(tree):
    rng = random.Random(11)
    n = tree.hypervisors
    chosen = set(rng.sample(range(n), max(1, n // 3))) | {n - 1}
    key = uuid.uuid4().hex
    assert counts(tree, key, sorted(chosen) + [n - 1]) == {hv: 1 for hv in chosen}  # duplicate id folded
    assert counts(tree, key) == {hv: 2 if hv in chosen else 1 for hv in range(n)}


def test_unknown_hypervisor_and_operation_are_answered_not_dropped(tree):
    n = tree.hypervisors
    replies = tree.client.run("ping", [0, n, n + 5], timeout=10)
    by_id = {r.hypervisor: r for r in replies}
    assert by_id[0].status == pb.OK
    assert by_id[n].status == by_id[n + 5].status == pb.UNKNOWN_HYPERVISOR
    assert f"hypervisor {n} " in by_id[n].error
    [reply] = tree.client.run("no.such.op", n - 1, timeout=10)
    assert reply.status == pb.UNKNOWN_OPERATION and "no.such.op" in reply.error


def test_expired_deadline_times_out_only_the_missing_hypervisors(tree):
    n = tree.hypervisors
    slow, fast = n - 1, sorted({0, n // 2} - {n - 1})
    started = time.monotonic()
    replies = tree.client.run("test.slow", fast + [slow], request=diag.TestSlowRequest(seconds=20, slow=[slow]), timeout=1.5)
    elapsed = time.monotonic() - started
    status = {r.hypervisor: r.status for r in replies}
    assert status == {**{hv: pb.OK for hv in fast}, slow: pb.TIMEOUT}
    assert 1.4 < elapsed < 5, elapsed
    timeout_reply = next(r for r in replies if r.status == pb.TIMEOUT)
    assert f"hypervisor {slow}" in timeout_reply.error and timeout_reply.job_id in timeout_reply.error
