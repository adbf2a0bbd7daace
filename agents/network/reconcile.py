"""Level-triggered convergence: read the kernel, diff against the plan, change only what is wrong.

``DataPlane.converge(plans)`` makes the hypervisor's objects exactly ``plans`` (desired.py),
in this order: first everything missing or wrong is made right (links, FDB and neighbour
entries, DHCP), then what is extra is removed (entries, then whole subnets); what is right is
never touched, so traffic whose desired state did not change never stops: not when the same
state is synced again, and not when a restarted agent syncs what its predecessor made
(shared/reference/sdn-peers.md, lessons 1 and 3).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from cloudland import procinfo
from cloudland_agents.network.desired import FdbEntry, SubnetPlan
from cloudland_agents.network.dhcp import Changes, DhcpServers
from cloudland_agents.network.hostns import HostNamespace
from cloudland_agents.network.kernel import Kernel, Link, vxlan_settings
from cloudland_agents.network.names import BRIDGE, DHCP, VXLAN, Names


class DataPlane:
    """One hypervisor's subnets in the agent's network namespace (the host's), or with ``host``
    in a simulated hypervisor's own, made at the first convergence that has a subnet to make
    (hostns.py)."""

    def __init__(self, hypervisor: int, names: Names, directory: Path, vtep: str,
                 host: HostNamespace | None = None) -> None:
        self.hypervisor = hypervisor
        self.names = names
        self.vtep = vtep
        self.directory = directory
        self.host = host
        self._handles: tuple[Kernel, DhcpServers] | None = None
        self._opened_in: tuple[int, int] | None = None  # the namespace the handles were opened in
        self.since: dict[tuple[int, str, str], int] = {}  # (vni, mac, vtep) -> when we put it (Unix ms)

    @property
    def kernel(self) -> Kernel:
        return self._open()[0]

    @property
    def dhcp(self) -> DhcpServers:
        return self._open()[1]

    def _open(self) -> tuple[Kernel, DhcpServers]:
        """The handles, opened again if the hypervisor's namespace is another than they were
        opened in (removed and made again behind our back)."""
        where = self.host.present() if self.host is not None else None
        if self._handles is not None and where != self._opened_in:
            self._close_handles()
        if self._handles is None:
            kernel = Kernel(self.hypervisor, self.names)
            self._handles = (kernel, DhcpServers(self.hypervisor, self.names, self.directory, kernel.ipr))
            self._opened_in = where
        return self._handles

    def _close_handles(self) -> None:
        if self._handles is not None:
            self._handles[1].close()
            self._handles[0].close()
            self._handles = None

    def close(self) -> None:
        self._close_handles()
        if self.host is not None:
            self.host.close()

    def converge(self, plans: dict[int, SubnetPlan]) -> Changes:
        changes = Changes()
        if self.host is not None:
            if not plans and self.host.present() is None:
                return changes  # nothing to make, and nothing made: no namespace (made on demand)
            changes.added += self.host.ensure_namespace()
            changes.added += self.host.ensure_underlay(self.kernel.ipr)
            changes.added += self.host.ensure_provider(self.kernel.ipr)
        links = self.kernel.links()
        made: dict[int, tuple[int, int]] = {}  # vni -> (bridge, vxlan) indexes
        for vni, plan in sorted(plans.items()):
            made[vni] = self._links(plan, links, changes)
        fdb = self.kernel.fdb({vx for _, vx in made.values()})
        neighbours = self.kernel.neighbours({vx for _, vx in made.values()})
        extra: list[tuple[int, str, str, str]] = []  # (vxlan, "fdb" or "neigh", key, value) to remove
        for vni, plan in sorted(plans.items()):
            bridge, vx = made[vni]
            for mac, vtep in plan.fdb.items():
                if fdb[vx].get(mac) == vtep:
                    changes.unchanged += 1
                else:
                    self.kernel.put_fdb(vx, mac, vtep)  # replaces an entry to another VTEP: no gap
                    self.since[(vni, mac, vtep)] = procinfo.now_ms()
                    changes.added += 1
            for ip, mac in plan.neighbours.items():
                if neighbours[vx].get(ip) == mac:
                    changes.unchanged += 1
                else:
                    self.kernel.put_neighbour(vx, ip, mac)
                    changes.added += 1
            extra += [(vx, "fdb", mac, vtep) for mac, vtep in fdb[vx].items() if mac not in plan.fdb]
            extra += [(vx, "neigh", ip, mac) for ip, mac in neighbours[vx].items() if ip not in plan.neighbours]
            if plan.dhcp is not None:
                self.dhcp.ensure(plan.dhcp, bridge, changes)
        # Removals last: what is extra within the subnets kept, then the subnets not wanted.
        for vx, kind, key, value in extra:
            if kind == "fdb":
                self.kernel.delete_fdb(vx, key, value)
            else:
                self.kernel.delete_neighbour(vx, key)
            changes.removed += 1
        dhcp_links = {link.vni for link in links.values() if link.kind == DHCP}  # a veth left without its namespace
        for vni in sorted(self.dhcp.present() | dhcp_links):
            if vni not in plans or plans[vni].dhcp is None:
                self.dhcp.remove(vni, changes)
        # VXLAN devices before bridges: the bridge's ports go first.
        for link in sorted(links.values(), key=lambda link: (link.kind != VXLAN, link.name)):
            if link.vni not in plans and link.kind in (BRIDGE, VXLAN):
                self.kernel.delete_link(link.name, link.index)
                changes.removed += 1
        self.since = {key: t for key, t in self.since.items() if plans.get(key[0]) and
                      plans[key[0]].fdb.get(key[1]) == key[2]}
        return changes

    def fdb(self, macs: Collection[str]) -> list[FdbEntry]:
        """The static FDB entries of our VXLAN devices for ``macs`` (empty: all), as the kernel
        has them now, by VNI then MAC."""
        if self.host is not None and self.host.present() is None:
            return []
        devices = {link.index: link.vni for link in self.kernel.links().values() if link.kind == VXLAN}
        return sorted(FdbEntry(devices[index], mac, vtep, self.since.get((devices[index], mac, vtep), 0))
                      for index, entries in self.kernel.fdb(set(devices)).items()
                      for mac, vtep in entries.items() if not macs or mac in macs)

    def _links(self, plan: SubnetPlan, links: dict[str, Link], changes: Changes) -> tuple[int, int]:
        """The subnet's bridge and VXLAN device, made or corrected; their indexes."""
        vni = plan.vni
        bridge = links.get(self.names.bridge(vni))
        if bridge is None:
            bridge_index = self.kernel.add_bridge(vni, plan.mtu)
            changes.added += 1
        else:
            bridge_index = bridge.index
            if bridge.mtu != plan.mtu or not bridge.up:
                self.kernel.set_link(bridge, mtu=plan.mtu, state="up")
                changes.added += 1
            else:
                changes.unchanged += 1
        vxlan = links.get(self.names.vxlan(vni))
        if vxlan is not None and vxlan.vxlan != vxlan_settings(vni, self.vtep):
            # A VXLAN device's id, local address and port cannot change in place: make it again.
            self.kernel.delete_link(vxlan.name, vxlan.index)
            changes.removed += 1
            vxlan = None
        if vxlan is None:
            vxlan_index = self.kernel.add_vxlan(vni, self.vtep, plan.mtu, bridge_index)
            changes.added += 1
        else:
            vxlan_index = vxlan.index
            if vxlan.mtu != plan.mtu or not vxlan.up or vxlan.master != bridge_index:
                self.kernel.set_link(vxlan, mtu=plan.mtu, master=bridge_index, state="up")
                changes.added += 1
            else:
                changes.unchanged += 1
        for name in (self.names.bridge(vni), self.names.vxlan(vni)):
            if self.kernel.isolate(name):
                changes.added += 1
        return bridge_index, vxlan_index
