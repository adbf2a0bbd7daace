"""The tree arithmetic of cloudland/topology.py, checked with tables.

Depths and relay counts are checked twice: against numbers worked out by hand
and against an independent brute-force walk (`reference_tree`) that builds the
tree from the module docstring's definition without calling `split`.
"""

from __future__ import annotations

import random

import pytest

from cloudland.errors import ConfigError, UnknownHypervisor
from cloudland.topology import ALL, NodeRange, Shape, route, split

# (leaves, fanout): every shape the structural tables run over.
SHAPES = [
    (1, 32), (2, 32), (31, 32), (32, 32), (33, 32), (1024, 32), (1025, 32), (10000, 32),
    (1, 2), (2, 2), (5, 2), (16, 2), (17, 2),
    (3, 3), (10, 3), (27, 3), (28, 3),
    (1, 0), (7, 0), (100, 0),
]


def reference_block(size: int, fanout: int) -> int:
    """The block size a node of ``size`` leaves is cut into: k**m, the largest power below size."""
    if fanout == 0 or size <= fanout:
        return 1
    m = 0
    while fanout ** (m + 1) < size:
        m += 1
    return fanout**m


def reference_tree(leaves: int, fanout: int) -> tuple[int, int]:
    """(depth, relays) by walking every node of the tree, without the module's code."""
    depth, relays = 0, 0
    stack = [(0, leaves, 0)]  # (first, end, level); the root is level 0
    while stack:
        first, end, level = stack.pop()
        size = end - first
        if size == 1 and level > 0:
            depth = max(depth, level)
            continue
        if level > 0:
            relays += 1
        block = reference_block(size, fanout)
        stack.extend((s, min(s + block, end), level + 1) for s in range(first, end, block))
    return depth, relays


def shape_of(leaves: int, fanout: int) -> Shape:
    return Shape(hypervisors=leaves, per_leaf=1, fanout=fanout)


# -- split / children -----------------------------------------------------------


@pytest.mark.parametrize(("leaves", "fanout"), SHAPES)
def test_children_partition_every_node(leaves: int, fanout: int) -> None:
    """Every node's children are contiguous, disjoint, cover it, and number at most fanout."""
    shape = shape_of(leaves, fanout)
    pending = [shape.root]
    while pending:
        node = pending.pop()
        children = shape.children(node)
        assert children == split(node, fanout)
        assert children[0].first == node.first
        assert children[-1].end == node.end
        for left, right in zip(children, children[1:]):
            assert left.end == right.first
        assert all(c.size >= 1 for c in children)
        assert sum(c.size for c in children) == node.size
        if fanout == 0:
            assert children == [NodeRange(i, i + 1) for i in range(node.first, node.end)]
        else:
            assert len(children) <= fanout
        pending.extend(c for c in children if not c.is_leaf)


@pytest.mark.parametrize(
    ("node", "fanout", "expected"),
    [
        (NodeRange(0, 1), 32, [(0, 1)]),
        (NodeRange(0, 2), 32, [(0, 1), (1, 2)]),
        (NodeRange(0, 32), 32, [(i, i + 1) for i in range(32)]),
        (NodeRange(0, 33), 32, [(0, 32), (32, 33)]),
        (NodeRange(0, 1024), 32, [(i, i + 32) for i in range(0, 1024, 32)]),
        (NodeRange(0, 1025), 32, [(0, 1024), (1024, 1025)]),
        (NodeRange(0, 10000), 32, [(s, min(s + 1024, 10000)) for s in range(0, 10000, 1024)]),
        (NodeRange(1024, 1025), 32, [(1024, 1025)]),
        (NodeRange(32, 96), 32, [(32, 64), (64, 96)]),
        (NodeRange(0, 5), 2, [(0, 4), (4, 5)]),
        (NodeRange(0, 4), 2, [(0, 2), (2, 4)]),
        (NodeRange(0, 10), 3, [(0, 9), (9, 10)]),
        (NodeRange(0, 9), 3, [(0, 3), (3, 6), (6, 9)]),
        (NodeRange(0, 4), 3, [(0, 3), (3, 4)]),
        (NodeRange(0, 5), 0, [(i, i + 1) for i in range(5)]),
        (NodeRange(3, 6), 0, [(3, 4), (4, 5), (5, 6)]),
    ],
)
def test_split_exact(node: NodeRange, fanout: int, expected: list[tuple[int, int]]) -> None:
    assert split(node, fanout) == [NodeRange(a, b) for a, b in expected]


def test_leaf_has_no_children_but_a_one_leaf_root_has_itself() -> None:
    shape = shape_of(33, 32)
    assert shape.children(NodeRange(32, 33)) == []
    single = shape_of(1, 32)
    assert single.children(single.root) == [NodeRange(0, 1)]


# -- depth and relays -----------------------------------------------------------


@pytest.mark.parametrize(
    ("leaves", "fanout", "depth", "relays"),
    [
        (1, 32, 1, 0),
        (2, 32, 1, 0),
        (31, 32, 1, 0),
        (32, 32, 1, 0),
        (33, 32, 2, 1),
        (1024, 32, 2, 32),
        (1025, 32, 3, 33),          # [0:1024) and its 32 blocks of 32
        (10000, 32, 3, 9 * 33 + 26),  # 9 full blocks of 1024, then 784 = 24*32 + 16
        (5, 2, 3, 3),               # [0:4) -> [0:2), [2:4); [4:5) is a leaf
        (16, 2, 4, 14),
        (10, 3, 3, 4),              # [0:9) -> three of 3; [9:10) is a leaf
        (100, 0, 1, 0),
    ],
)
def test_depth_and_relays_by_hand(leaves: int, fanout: int, depth: int, relays: int) -> None:
    shape = shape_of(leaves, fanout)
    assert shape.depth() == depth
    assert len(shape.relays()) == relays


@pytest.mark.parametrize(("leaves", "fanout"), SHAPES)
def test_depth_and_relays_match_brute_force(leaves: int, fanout: int) -> None:
    shape = shape_of(leaves, fanout)
    depth, relays = reference_tree(leaves, fanout)
    assert shape.depth() == depth
    relay_nodes = shape.relays()
    assert len(relay_nodes) == relays
    assert len(set(relay_nodes)) == len(relay_nodes)
    assert all(not r.is_leaf and r != shape.root for r in relay_nodes)


def test_relays_are_listed_top_down() -> None:
    relays = shape_of(1025, 32).relays()
    assert relays[0] == NodeRange(0, 1024)
    assert relays[1:] == [NodeRange(s, s + 32) for s in range(0, 1024, 32)]


# -- path_to / parent_of --------------------------------------------------------


@pytest.mark.parametrize("leaves", [1, 31, 32, 33, 1025])
def test_parent_walk_matches_path(leaves: int) -> None:
    shape = shape_of(leaves, 32)
    depth = shape.depth()
    for leaf in range(leaves):
        path = shape.path_to(leaf)
        assert path[-1] == NodeRange(leaf, leaf + 1)
        assert all(leaf in node for node in path)
        assert len(path) <= depth
        # At least one step: in a one-leaf tree the leaf and the root are the same range.
        walked = [NodeRange(leaf, leaf + 1)]
        for _ in range(depth):
            walked.append(shape.parent_of(walked[-1]))
            if walked[-1] == shape.root:
                break
        assert walked[-1] == shape.root
        assert walked[:-1] == path[::-1]
    assert len(shape.path_to(0)) == depth


@pytest.mark.parametrize(
    ("leaves", "leaf", "expected"),
    [
        (33, 0, [(0, 32), (0, 1)]),
        (33, 32, [(32, 33)]),
        (1025, 1024, [(1024, 1025)]),
        (1025, 100, [(0, 1024), (96, 128), (100, 101)]),
    ],
)
def test_path_to_exact(leaves: int, leaf: int, expected: list[tuple[int, int]]) -> None:
    assert shape_of(leaves, 32).path_to(leaf) == [NodeRange(a, b) for a, b in expected]


# -- route ----------------------------------------------------------------------

ROUTE_CASES = [(h, p) for h in (1, 31, 32, 33, 1025) for p in (1, 4)]


def routing_levels(shape: Shape) -> list[list[NodeRange]]:
    """The root's children, and the children of the first and last relay if any."""
    levels = [shape.children(shape.root)]
    relays = shape.relays()
    for relay in relays[:1] + relays[-1:]:
        levels.append(shape.children(relay))
    return levels


@pytest.mark.parametrize(("hypervisors", "per_leaf"), ROUTE_CASES)
def test_route_unicast(hypervisors: int, per_leaf: int) -> None:
    shape = Shape(hypervisors, per_leaf, 32)
    children = shape.children(shape.root)
    ids = range(hypervisors) if hypervisors <= 200 else random.Random(7).sample(range(hypervisors), 200)
    for hv in ids:
        routed = route(shape, children, [hv])
        assert len(routed) == 1
        [(child, share)] = routed.items()
        assert child in children
        assert share == [hv]
        assert hv in shape.hypervisors_of(child)


@pytest.mark.parametrize(("hypervisors", "per_leaf"), ROUTE_CASES)
def test_route_multicast(hypervisors: int, per_leaf: int) -> None:
    shape = Shape(hypervisors, per_leaf, 32)
    rng = random.Random(hypervisors * 10 + per_leaf)
    for children in routing_levels(shape):
        under = [hv for c in children for hv in shape.hypervisors_of(c)]
        for _ in range(20):
            targets = rng.sample(under, rng.randint(1, len(under)))
            routed = route(shape, children, targets)
            seen: list[int] = []
            for child, share in routed.items():
                assert child in children
                assert share, "a child without targets must not be routed to"
                assert share == sorted(share)
                assert set(share) <= set(shape.hypervisors_of(child))
                seen.extend(share)
            assert len(seen) == len(set(seen))
            assert set(seen) == set(targets)


@pytest.mark.parametrize(("hypervisors", "per_leaf"), ROUTE_CASES)
def test_route_broadcast(hypervisors: int, per_leaf: int) -> None:
    shape = Shape(hypervisors, per_leaf, 32)
    for children in routing_levels(shape):
        assert ALL is None
        routed = route(shape, children, ALL)
        assert list(routed) == children
        assert all(share is None for share in routed.values())


def test_route_multicast_duplicates_appear_once() -> None:
    shape = Shape(1025, 1, 32)
    routed = route(shape, shape.children(shape.root), [5, 1024, 5, 7, 1024, 5])
    assert routed == {NodeRange(0, 1024): [5, 7], NodeRange(1024, 1025): [1024]}


def test_route_empty_set_goes_nowhere() -> None:
    shape = Shape(33, 1, 32)
    assert route(shape, shape.children(shape.root), []) == {}


@pytest.mark.parametrize(("hypervisors", "per_leaf"), ROUTE_CASES)
@pytest.mark.parametrize("offset", [-1, 0, 1, 1000])
def test_route_refuses_ids_outside_the_tree(hypervisors: int, per_leaf: int, offset: int) -> None:
    shape = Shape(hypervisors, per_leaf, 32)
    bad = -1 if offset == -1 else hypervisors + offset
    children = shape.children(shape.root)
    with pytest.raises(UnknownHypervisor, match=str(bad)):
        route(shape, children, [bad])
    with pytest.raises(UnknownHypervisor, match=str(bad)):
        route(shape, children, [0, bad])


def test_route_refuses_ids_in_the_tree_but_not_under_these_children() -> None:
    shape = Shape(1025, 1, 32)
    block = shape.children(NodeRange(0, 1024))[1]  # [32:64)
    children = shape.children(block)
    assert route(shape, children, [40]) == {NodeRange(40, 41): [40]}
    for outside in (0, 31, 64, 1024):
        with pytest.raises(UnknownHypervisor, match=str(outside)):
            route(shape, children, [40, outside])


# -- Shape validation and hypervisor placement ------------------------------------


@pytest.mark.parametrize(
    ("hypervisors", "per_leaf", "fanout", "names"),
    [
        (0, 1, 32, "hypervisor"),
        (-5, 1, 32, "hypervisor"),
        (10, 0, 32, "per_leaf"),
        (10, -1, 32, "per_leaf"),
        (10, 1, 1, "fanout"),
        (10, 1, -1, "fanout"),
        (10, 1, -32, "fanout"),
    ],
)
def test_shape_refuses(hypervisors: int, per_leaf: int, fanout: int, names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        Shape(hypervisors, per_leaf, fanout)


@pytest.mark.parametrize(("fanout"), [0, 2, 32])
def test_shape_accepts_flat_and_k_ary(fanout: int) -> None:
    assert Shape(1, 1, fanout).leaves == 1


@pytest.mark.parametrize(
    ("hypervisors", "per_leaf", "leaves", "last_leaf"),
    [
        (10, 4, 3, [8, 9]),
        (12, 4, 3, [8, 9, 10, 11]),
        (1, 4, 1, [0]),
        (1025, 4, 257, [1024]),
        (5, 1, 5, [4]),
    ],
)
def test_leaf_placement(hypervisors: int, per_leaf: int, leaves: int, last_leaf: list[int]) -> None:
    shape = Shape(hypervisors, per_leaf, 32)
    assert shape.leaves == leaves
    assert list(shape.hypervisors_of(NodeRange(leaves - 1, leaves))) == last_leaf
    assert list(shape.hypervisors_of(shape.root)) == list(range(hypervisors))
    for hv in range(hypervisors):
        leaf = shape.leaf_of(hv)
        assert leaf == hv // per_leaf
        assert hv in shape.hypervisors_of(NodeRange(leaf, leaf + 1))
    for bad in (-1, hypervisors):
        with pytest.raises(UnknownHypervisor, match=str(bad)):
            shape.leaf_of(bad)


def test_hypervisors_of_ragged_leaf_by_hand() -> None:
    shape = Shape(10, 4, 32)
    assert [list(shape.hypervisors_of(NodeRange(i, i + 1))) for i in range(3)] == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8, 9],
    ]
    assert shape.leaf_of(8) == shape.leaf_of(9) == 2
    assert list(shape.hypervisors_of(NodeRange(1, 3))) == [4, 5, 6, 7, 8, 9]
