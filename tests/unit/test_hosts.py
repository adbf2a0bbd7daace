"""Membership and placement (launcher/hosts.py): which host holds which leaf, where relays run."""

from __future__ import annotations

import pytest

from cloudland.errors import Conflict
from cloudland.topology import NodeRange, Shape
from cloudland_launcher.hosts import Membership

# 8 leaves, fan-out 2: root -> [0:4) [4:8) -> [0:2) [2:4) [4:6) [6:8) -> leaves.
SHAPE = Shape(8, 1, 2)


def leaf(i: int) -> NodeRange:
    return NodeRange(i, i + 1)


def test_hosts_take_the_lowest_free_slots_in_join_order():
    members = Membership(SHAPE)
    assert members.join("h1", "10.0.0.2", 1, []) == [0]
    assert members.join("h2", "10.0.0.3", 2, []) == [1, 2]
    assert members.present() == {0, 1, 2}
    assert members.host_of(leaf(2)) == "h2"


def test_zero_leaves_takes_every_free_slot():
    members = Membership(SHAPE)
    members.join("h1", "a", 3, [])
    assert members.join("all", "b", 0, []) == [3, 4, 5, 6, 7]


def test_a_host_coming_back_keeps_its_slots_and_asks_for_held_ones():
    members = Membership(SHAPE)
    members.join("h1", "a", 1, [])
    members.join("h2", "b", 1, [])
    members.disconnect("h1")
    assert members.join("h1", "a", 1, []) == [0], "same name, same slot"
    fresh = Membership(SHAPE)  # a root that restarted: the host says what it held
    assert fresh.join("h2", "b", 1, [1]) == [1]
    assert fresh.join("h1", "a", 1, [1]) == [0], "a held slot another host owns is not taken"


def test_the_all_in_one_host_coming_back_to_a_new_root_keeps_every_slot_it_held():
    # leaves 0 asks for every free slot; its held ones are its own, not free ones counted twice
    # (a root started again once refused it: "asks for 16 leaves, but ... has 8 free").
    fresh = Membership(SHAPE)
    assert fresh.join("local", "a", 0, list(range(8))) == list(range(8))
    partly = Membership(SHAPE)
    assert partly.join("local", "a", 0, [2, 5]) == list(range(8))


def test_a_full_tree_refuses_a_host_and_says_how_to_grow_it():
    members = Membership(Shape(2, 1, 2))
    members.join("h1", "a", 2, [])
    with pytest.raises(Conflict, match="h2 asks for 1 leaves.*0 free.*CLOUDLAND_HYPERVISORS"):
        members.join("h2", "b", 1, [])


def test_relays_exist_only_over_held_slots_and_run_on_their_first_host():
    members = Membership(SHAPE)
    members.join("h1", "a", 1, [])          # leaf 0
    orders = members.plan()
    assert orders == [("h1", "run", NodeRange(0, 4)), ("h1", "run", NodeRange(0, 2)), ("h1", "run", leaf(0))]
    members.join("h2", "b", 3, [])          # leaves 1, 2, 3
    assert members.plan() == [("h2", "run", NodeRange(2, 4)), ("h2", "run", leaf(1)),
                              ("h2", "run", leaf(2)), ("h2", "run", leaf(3))]
    assert members.placed == {NodeRange(0, 4): "h1", NodeRange(0, 2): "h1", NodeRange(2, 4): "h2"}
    assert members.plan() == [], "a second plan with nothing changed orders nothing"


def test_a_lost_host_moves_its_relays_into_the_subtree_and_gets_them_back_never():
    members = Membership(SHAPE)
    members.join("h1", "a", 1, [])
    members.join("h2", "b", 1, [])
    members.plan()
    members.disconnect("h1")
    assert members.plan() == [("h2", "run", NodeRange(0, 4)), ("h2", "run", NodeRange(0, 2))]
    members.join("h1", "a", 1, [])
    # h1 comes back with only its leaf: the relays stay where they moved (no flapping).
    assert members.plan() == [("h1", "run", leaf(0))]
    assert members.placed[NodeRange(0, 4)] == "h2"


def test_removing_a_host_frees_its_slots_and_stops_relays_no_longer_needed():
    members = Membership(SHAPE)
    members.join("h1", "a", 1, [])
    members.join("h5", "e", 1, [4])          # asks for slot 4 (held before a root restart)
    members.plan()
    assert members.host_of(NodeRange(4, 8)) == "h5"
    members.remove("h5")
    assert members.present() == {0}
    assert members.plan() == []
    assert NodeRange(4, 8) not in members.placed and members.vacant(NodeRange(4, 8))


def test_per_leaf_hypervisors_are_present_with_their_leaf():
    members = Membership(Shape(10, 4, 2))   # leaves [0..3], [4..7], [8, 9]
    members.join("h1", "a", 1, [2])
    assert members.present() == {8, 9}
