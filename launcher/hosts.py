"""Which host holds which leaf, and where each relay runs (proto/README.md §10.4).

The tree's shape is fixed at the root's start (``hypervisors`` is its capacity); hosts fill
its leaf slots as they join. A host agent says how many leaves it runs, and gets the lowest
free slots (or, when it comes back, the ones it held). A relay exists only while its range
holds a slot that a host owns ("on demand"), and it runs on a host of its own subtree: the
connected host that owns the lowest slot in its range. Nothing here does I/O: the root turns
the orders into frames, and tests/unit/test_hosts.py checks the arithmetic with tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cloudland.errors import Conflict
from cloudland.topology import NodeRange, Shape


@dataclass
class Host:
    name: str
    address: str = ""
    leaves: list[int] = field(default_factory=list)
    connected: bool = False
    pid: int = 0
    ranks: set[NodeRange] = field(default_factory=set)   # what it was told to run


Order = tuple[str, str, NodeRange]  # (host, "run" | "stop", node)


class Membership:
    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        self.hosts: dict[str, Host] = {}
        self.owner: dict[int, str] = {}          # leaf index -> host name
        self.placed: dict[NodeRange, str] = {}   # relay -> host name
        self._relays = shape.relays()
        self._present: frozenset[int] | None = None  # present(), until the owners change

    # -- hosts -----------------------------------------------------------------

    def join(self, name: str, address: str, leaves: int, held: list[int], pid: int = 0) -> list[int]:
        """A host (re)connects; returns its leaf slots. ``leaves`` 0 takes every free slot.

        Raises Conflict when no slot is free or a held slot belongs to another host.
        """
        host = self.hosts.get(name) or Host(name)
        mine = sorted(leaf for leaf, owner in self.owner.items() if owner == name)
        for leaf in held:
            if leaf not in mine and 0 <= leaf < self.shape.leaves and leaf not in self.owner:
                mine.append(leaf)
        # Held slots that came back with it (a root started again) count as its own, not free.
        free = [leaf for leaf in range(self.shape.leaves) if leaf not in self.owner and leaf not in mine]
        wanted = len(free) + len(mine) if leaves == 0 else leaves
        if len(mine) < wanted:
            extra = [leaf for leaf in free if leaf not in mine][: wanted - len(mine)]
            if len(mine) + len(extra) < wanted:
                raise Conflict(f"host {name} asks for {wanted} leaves, but the tree of {self.shape.leaves} "
                               f"leaves has {len(free)} free (raise its capacity, CLOUDLAND_HYPERVISORS)")
            mine += extra
        host.address, host.connected, host.pid = address, True, pid
        host.leaves = sorted(mine)
        for leaf in host.leaves:
            self.owner[leaf] = name
        self._present = None
        self.hosts[name] = host
        return host.leaves

    def disconnect(self, name: str) -> None:
        """Its channel broke: it keeps its slots (it may come back), its relays move."""
        host = self.hosts.get(name)
        if host is not None:
            host.connected = False
            host.ranks.clear()

    def remove(self, name: str) -> Host:
        """Forget a host and free its slots; raises KeyError if unknown."""
        host = self.hosts.pop(name)
        for leaf in host.leaves:
            self.owner.pop(leaf, None)
        self._present = None
        return host

    # -- what runs where ---------------------------------------------------------

    def present(self) -> frozenset[int]:
        """Hypervisor ids whose leaf a host owns. Kept until the owners change: built on every
        command it cost the root 1 ms of each unicast at 10,000 hypervisors."""
        if self._present is None:
            ids: set[int] = set()
            for leaf in self.owner:
                ids.update(self.shape.hypervisors_of(NodeRange(leaf, leaf + 1)))
            self._present = frozenset(ids)
        return self._present

    def holds(self, hypervisor: int) -> bool:
        """True if a host owns ``hypervisor``'s leaf."""
        return 0 <= hypervisor < self.shape.hypervisors and self.shape.leaf_of(hypervisor) in self.owner

    def vacant(self, node: NodeRange) -> bool:
        return not any(leaf in self.owner for leaf in range(node.first, node.end))

    def plan(self) -> list[Order]:
        """Orders that make every connected host run exactly its ranks: its leaves, and the
        relays placed on it. Updates ``placed`` and each host's ``ranks``."""
        want: dict[str, set[NodeRange]] = {h.name: set() for h in self.hosts.values() if h.connected}
        for leaf, owner in self.owner.items():
            if owner in want:
                want[owner].add(NodeRange(leaf, leaf + 1))
        for relay in self._relays:
            current = self.placed.get(relay)
            owners = [self.owner[leaf] for leaf in range(relay.first, relay.end) if leaf in self.owner]
            live = [o for o in owners if o in want]
            if not live:
                self.placed.pop(relay, None)
                continue
            host = current if current in live else live[0]
            self.placed[relay] = host
            want[host].add(relay)
        orders: list[Order] = []
        for name, nodes in want.items():
            host = self.hosts[name]
            orders += [(name, "stop", n) for n in sorted(host.ranks - nodes)]
            # Relays first, top down: leaves look for their parent as soon as they start.
            starts = sorted(nodes - host.ranks, key=lambda n: (n.is_leaf, -n.size, n.first))
            orders += [(name, "run", n) for n in starts]
            host.ranks = nodes
        return orders

    def host_of(self, node: NodeRange) -> str:
        """The host that runs ``node`` ("" if none does)."""
        if node.is_leaf:
            return self.owner.get(node.first, "")
        return self.placed.get(node, "")
