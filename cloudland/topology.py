"""Pure tree arithmetic: which ranks exist and where a command goes.

The tree is a complete k-ary tree over *leaf ranks*. A leaf rank hosts
``per_leaf`` consecutive hypervisor ids (1 in production, many when simulated).
Every node is named by the half-open range of leaf indices under it
(`NodeRange`); a range of one leaf is that leaf, any larger range is a relay.
A node's children split its range into blocks of the largest power of the
fan-out that is smaller than the range, so a tree over L leaves has
ceil(log_k L) levels of relays and the root has at most k children.
Fan-out 0 means flat: the root's children are all the leaves.

No I/O here: tests/unit/test_topology.py checks it with tables.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from cloudland.errors import ConfigError, UnknownHypervisor

DEFAULT_FANOUT = 32

HypervisorId = int


@dataclass(frozen=True, order=True)
class NodeRange:
    """The leaves [first, end) under one node of the tree."""

    first: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.first

    @property
    def is_leaf(self) -> bool:
        return self.size == 1

    def __contains__(self, leaf: object) -> bool:
        return isinstance(leaf, int) and self.first <= leaf < self.end

    def __str__(self) -> str:
        return f"leaf {self.first}" if self.is_leaf else f"relay[{self.first}:{self.end})"


@dataclass(frozen=True)
class Shape:
    """How many hypervisors, how many per leaf rank, and the fan-out."""

    hypervisors: int
    per_leaf: int = 1
    fanout: int = DEFAULT_FANOUT

    def __post_init__(self) -> None:
        if self.hypervisors < 1:
            raise ConfigError(f"a tree needs at least 1 hypervisor, got {self.hypervisors}")
        if self.per_leaf < 1:
            raise ConfigError(f"per_leaf must be at least 1, got {self.per_leaf}")
        if self.fanout == 1 or self.fanout < 0:
            raise ConfigError(f"fanout must be 0 (flat) or at least 2, got {self.fanout}")

    @property
    def leaves(self) -> int:
        return -(-self.hypervisors // self.per_leaf)

    @property
    def root(self) -> NodeRange:
        return NodeRange(0, self.leaves)

    def leaf_of(self, hypervisor: HypervisorId) -> int:
        """The leaf rank hosting ``hypervisor``."""
        if not 0 <= hypervisor < self.hypervisors:
            raise UnknownHypervisor(
                f"hypervisor {hypervisor} is not in the tree (ids are 0..{self.hypervisors - 1})"
            )
        return hypervisor // self.per_leaf

    def hypervisors_of(self, node: NodeRange) -> range:
        """The hypervisor ids under ``node``."""
        return range(node.first * self.per_leaf, min(node.end * self.per_leaf, self.hypervisors))

    def children(self, node: NodeRange) -> list[NodeRange]:
        """The child nodes of ``node`` (the root is ``self.root``); none for a leaf."""
        if node.is_leaf and node != self.root:
            return []
        return split(node, self.fanout)

    def relays(self) -> list[NodeRange]:
        """Every relay node, top-down."""
        found: list[NodeRange] = []
        pending = deque(self.children(self.root))
        while pending:
            node = pending.popleft()
            if not node.is_leaf:
                found.append(node)
                pending.extend(self.children(node))
        return found

    def depth(self) -> int:
        """Hops from the root to the deepest leaf (the first leaf sits in the largest block)."""
        return len(self.path_to(0))

    def path_to(self, leaf: int) -> list[NodeRange]:
        """The nodes a command crosses from the root's child down to ``leaf``."""
        if not 0 <= leaf < self.leaves:
            raise UnknownHypervisor(f"leaf {leaf} is not in the tree (leaves are 0..{self.leaves - 1})")
        path: list[NodeRange] = []
        node = self.root
        while True:
            child = next(c for c in self.children(node) if leaf in c)
            path.append(child)
            if child.is_leaf:
                return path
            node = child

    def parent_of(self, node: NodeRange) -> NodeRange:
        """The parent of a non-root node (the root's children have the root as parent)."""
        if not (0 <= node.first < node.end <= self.leaves) or (node == self.root and self.leaves > 1):
            raise UnknownHypervisor(f"{node} is not a non-root node of a tree of {self.leaves} leaves")
        parent = self.root
        while True:
            child = next(c for c in self.children(parent) if node.first in c)
            if child == node:
                return parent
            parent = child


def split(node: NodeRange, fanout: int) -> list[NodeRange]:
    """Split a node's leaves among at most ``fanout`` children (all leaves if flat)."""
    if fanout == 0 or node.size <= fanout:
        return [NodeRange(i, i + 1) for i in range(node.first, node.end)]
    span = 1
    while span * fanout < node.size:
        span *= fanout
    return [NodeRange(s, min(s + span, node.end)) for s in range(node.first, node.end, span)]


ALL = None  # a broadcast target set


def route(
    shape: Shape, children: Sequence[NodeRange], targets: Iterable[HypervisorId] | None
) -> Mapping[NodeRange, list[HypervisorId] | None]:
    """Which children a command goes to, each with its share of the targets.

    ``targets`` is ``ALL`` (None) for a broadcast, which every child receives
    with share ``ALL``; otherwise only the children whose subtree holds a target
    are returned, each with its targets in ascending order. Ids outside the tree
    raise UnknownHypervisor; ``children`` must be sorted and disjoint.
    """
    if targets is ALL:
        return {child: ALL for child in children}
    starts = [c.first for c in children]
    shares: dict[NodeRange, list[HypervisorId]] = {}
    for hv in sorted(set(targets)):
        leaf = shape.leaf_of(hv)
        i = bisect.bisect_right(starts, leaf) - 1
        if i < 0 or leaf not in children[i]:
            raise UnknownHypervisor(f"hypervisor {hv} is not under any of these children")
        shares.setdefault(children[i], []).append(hv)
    return shares
