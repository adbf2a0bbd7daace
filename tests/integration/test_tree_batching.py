"""A relay sends fewer messages up than it receives: its children's replies are batched."""

from __future__ import annotations

import time
import uuid

import pytest

from cloudland_proto.v1 import diag_pb2 as diag
from cloudland_proto.v1 import envelope_pb2 as pb
from cloudland_launcher.harness import wait_for


@pytest.mark.parametrize("shape", [(33, 1, 32), (1025, 32, 32), (16, 1, 4)], ids=str)
def test_relays_batch_replies_upward(make_tree, shape):
    tree = make_tree(*shape)
    relays = [name for name in tree.peers() if name.startswith("relay")]
    assert relays, "every shape here has at least one relay"
    broadcasts = 5
    for _ in range(broadcasts):
        replies = tree.client.run("test.count", request=diag.TestCountRequest(key=uuid.uuid4().hex), timeout=30)
        assert len(replies) == tree.hypervisors and all(r.status == pb.OK for r in replies)

    def counters():
        peers = tree.peers()
        stats = {r: (peers[r].replies_in, peers[r].replies_out) for r in relays}
        return stats if all(o >= broadcasts for _, o in stats.values()) else None

    time.sleep(1.2)  # heartbeats (every 0.5 s) carry the counters up
    for relay, (replies_in, replies_out) in wait_for(counters, 5, "relay counters").items():
        children = len([n for n in tree.peers() if n != relay]) and replies_in // broadcasts
        assert replies_out < replies_in, f"{relay}: {replies_out} batches up for {replies_in} messages in"
        assert children >= 2, f"{relay} received {replies_in} messages for {broadcasts} broadcasts"


def test_every_command_reports_the_tree_messages_it_cost(make_tree):
    """§3 "Message counts": 16 leaves under 4 relays (fan-out 4). A command costs its copies down
    and the batches its replies climbed in, so the count follows the targets, not the tree."""
    tree = make_tree(16, 1, 4)

    def cost(targets):
        ok, others, messages = tree.client.count("ping", targets, timeout=30)
        assert not others and ok == ({targets} if isinstance(targets, int) else set(targets or range(16)))
        return messages

    assert cost(5) == 4                   # root -> relay -> leaf, and one batch back each hop
    assert cost([0, 4, 8, 12]) == 16      # one leaf under each relay: 4 such paths
    # Two leaves of one relay: 1 + 2 down, 2 leaf batches, and the relay's batch (two if the
    # second leaf answered after the relay's linger).
    assert cost([0, 1]) in (6, 7)
    # Everything: 4 + 16 down, 16 leaf batches, at least one batch from each relay.
    broadcast = cost(None)
    assert 40 <= broadcast <= 52, broadcast
