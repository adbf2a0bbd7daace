"""DHCP and DNS of a subnet on one hypervisor: one dnsmasq in a small namespace of its own.

The namespace ``<prefix>d<vni>`` (``<host>.<prefix>d<vni>`` beside a simulated hypervisor's own
namespace, names.py ``netns``) holds one veth end, ``d0``, with the subnet's server address;
its other end, also called ``<prefix>d<vni>``, is a port of the subnet's bridge. dnsmasq serves
static leases only (an unknown MAC gets nothing) from ``dhcp-hosts`` and the VPC's names from
``hosts``, both in the subnet's directory ``<state dir>/network/<prefix>-hv<id>/<prefix>d<vni>/``. A
change of leases or names rewrites those files and sends SIGHUP: no restart, no lease lost.
Everything else (range, router, DNS, MTU, domain) is on dnsmasq's command line, so the running
process's ``/proc/<pid>/cmdline`` tells whether it is right; when it is not, dnsmasq restarts.
dnsmasq runs as a daemon of its own (it forks away from the agent), so an agent killed or
restarted leaves it serving.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from cloudland.errors import DriverError
from cloudland.netclean import kill_in_netns
from cloudland_agents.network.desired import LEASE, Dhcp
from cloudland_agents.network.names import DHCP, DHCP_INSIDE, Names

NETNS_DIR = Path("/run/netns")
START_S = 5.0


def server_mac(vni: int) -> str:
    """The DHCP server's MAC: the same on every hypervisor, as its address is (a guest moved to
    another host keeps a right ARP entry); locally administered, and unique per subnet."""
    return "02:cd:" + ":".join(f"{b:02x}" for b in (0, vni >> 16, (vni >> 8) & 0xFF, vni & 0xFF))


@dataclass
class Changes:
    added: int = 0
    removed: int = 0
    unchanged: int = 0


class DhcpServers:
    """The DHCP namespaces and dnsmasq processes of one hypervisor's subnets."""

    def __init__(self, hypervisor: int, names: Names, directory: Path, host: IPRoute) -> None:
        self.hypervisor = hypervisor
        self.names = names
        self.directory = directory
        self.host = host  # the host namespace's handle (the bridge side)
        self._inside: dict[int, IPRoute] = {}  # per VNI, a handle in its namespace (each forks a helper)

    def close(self) -> None:
        for handle in self._inside.values():
            handle.close()
        self._inside.clear()

    # -- reading ----------------------------------------------------------------------------

    def present(self) -> set[int]:
        """VNIs that have a DHCP namespace, a directory or a process of ours."""
        found = set()
        spaces = os.listdir(NETNS_DIR) if NETNS_DIR.is_dir() else []
        names = [link for link in map(self.names.link_of_netns, spaces) if link is not None]
        names += os.listdir(self.directory) if self.directory.is_dir() else []
        for name in names:
            parsed = self.names.parse(name)
            if parsed is not None and parsed[0] == DHCP:
                found.add(parsed[1])
        return found

    def _dir(self, vni: int) -> Path:
        return self.directory / self.names.dhcp(vni)

    def pid(self, vni: int) -> int:
        """The running dnsmasq of ``vni`` (by its pid file, checked against its command line), 0 if none."""
        pidfile = self._dir(vni) / "pid"
        try:
            pid = int(pidfile.read_text().strip() or 0)
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return 0
        return pid if f"--pid-file={pidfile}".encode() in cmdline else 0

    # -- converging -------------------------------------------------------------------------

    def ensure(self, dhcp: Dhcp, bridge: int, changes: Changes) -> None:
        """Make ``dhcp``'s namespace, veth, files and process right, changing only what is not."""
        vni = dhcp.vni
        name = self.names.netns(self.names.dhcp(vni))
        try:
            if name not in (os.listdir(NETNS_DIR) if NETNS_DIR.is_dir() else []):
                stale = self._inside.pop(vni, None)  # a handle on a namespace removed behind our back
                if stale is not None:
                    stale.close()
                netns.create(name)
                changes.added += 1
            else:
                changes.unchanged += 1
            self._ensure_veth(dhcp, bridge, changes)
        except (NetlinkError, OSError) as exc:
            raise DriverError(self.hypervisor, f"cannot make DHCP namespace {name} of vni {vni}: {exc}") from exc
        directory = self._dir(vni)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        rewritten = write_if_changed(directory / "dhcp-hosts",
                                      "".join(f"{mac},{ip}{',' + host if host else ''},{LEASE}\n"
                                              for mac, ip, host in dhcp.leases))
        rewritten |= write_if_changed(directory / "hosts", "".join(f"{ip} {host}\n" for ip, host in dhcp.names))
        argv = self.argv(dhcp)
        pid = self.pid(vni)
        if pid and _cmdline(pid) == argv[3:]:
            if rewritten:
                os.kill(pid, signal.SIGHUP)  # re-reads dhcp-hosts and hosts
                changes.added += 1
            else:
                changes.unchanged += 1
            return
        if pid:
            _stop(pid)
            changes.removed += 1
        # Whatever else runs in our namespace (a dnsmasq whose pid file was lost) holds its ports.
        kill_in_netns(NETNS_DIR / name)
        self._start(vni, argv)
        changes.added += 1

    def _ensure_veth(self, dhcp: Dhcp, bridge: int, changes: Changes) -> None:
        name = self.names.dhcp(dhcp.vni)
        found = self.host.link_lookup(ifname=name)
        if not found:
            self.host.link("add", ifname=name, kind="veth", mtu=dhcp.mtu,
                           peer={"ifname": DHCP_INSIDE, "net_ns_fd": self.names.netns(name),
                                 "address": server_mac(dhcp.vni),
                                 "mtu": dhcp.mtu})
            found = self.host.link_lookup(ifname=name)
            changes.added += 1
        outside = self.host.get_links(found[0])[0]
        if outside.get("master") != bridge or outside.get("mtu") != dhcp.mtu or not outside["flags"] & 1:
            self.host.link("set", index=found[0], master=bridge, mtu=dhcp.mtu, state="up")
            changes.added += 1
        else:
            changes.unchanged += 1
        inside = self._handle(dhcp.vni)
        index = inside.link_lookup(ifname=DHCP_INSIDE)
        if not index:
            raise DriverError(self.hypervisor, f"DHCP namespace {name} has no {DHCP_INSIDE}")
        link = inside.get_links(index[0])[0]
        if link.get("mtu") != dhcp.mtu or not link["flags"] & 1 or link.get("address") != server_mac(dhcp.vni):
            inside.link("set", index=index[0], mtu=dhcp.mtu, address=server_mac(dhcp.vni), state="up")
        lo = inside.link_lookup(ifname="lo")[0]
        inside.link("set", index=lo, state="up")
        want = (str(dhcp.address), dhcp.network.prefixlen)
        have = {(a.get("address"), a["prefixlen"]) for a in inside.get_addr(index=index[0], family=2)}
        if want in have:
            changes.unchanged += 1
        else:
            inside.addr("add", index=index[0], address=want[0], prefixlen=want[1])
            changes.added += 1
        for address, prefixlen in have - {want}:
            inside.addr("del", index=index[0], address=address, prefixlen=prefixlen)
            changes.removed += 1

    def _handle(self, vni: int) -> IPRoute:
        handle = self._inside.get(vni)
        if handle is None:
            handle = self._inside[vni] = IPRoute(netns=self.names.netns(self.names.dhcp(vni)), flags=0)
        return handle

    def argv(self, dhcp: Dhcp) -> list[str]:
        """How ``dhcp``'s dnsmasq runs: nsenter into its namespace, then dnsmasq's own words."""
        directory = self._dir(dhcp.vni)
        words = [
            "dnsmasq", "--conf-file=/dev/null", "--user=root", f"--pid-file={directory / 'pid'}",
            f"--dhcp-leasefile={directory / 'leases'}", f"--log-facility={directory / 'log'}",
            f"--interface={DHCP_INSIDE}", "--bind-interfaces", "--except-interface=lo", "--no-hosts", "--no-resolv",
            f"--dhcp-range=set:subnet,{dhcp.network.network_address},static,{dhcp.network.netmask},{LEASE}",
            f"--dhcp-hostsfile={directory / 'dhcp-hosts'}", f"--addn-hosts={directory / 'hosts'}",
            "--dhcp-authoritative", f"--dhcp-option=option:mtu,{dhcp.mtu}",
            f"--dhcp-option=option:dns-server,{','.join(dhcp.dns)}",
            f"--dhcp-option=option:router,{dhcp.router}" if dhcp.router else "--dhcp-option=3",  # none
        ]
        if dhcp.domain:
            words += [f"--domain={dhcp.domain}", f"--local=/{dhcp.domain}/", "--expand-hosts"]
        return ["nsenter", f"--net={NETNS_DIR / self.names.netns(self.names.dhcp(dhcp.vni))}", "--", *words]

    def _start(self, vni: int, argv: list[str]) -> None:
        pidfile = self._dir(vni) / "pid"
        pidfile.unlink(missing_ok=True)
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=START_S)
        if done.returncode != 0:
            raise DriverError(self.hypervisor, f"dnsmasq of vni {vni} did not start: "
                                               f"{(done.stderr or done.stdout).strip()[-400:]}")
        deadline = time.monotonic() + START_S
        while not self.pid(vni):  # the daemon writes its pid file after it forked away
            if time.monotonic() > deadline:
                raise DriverError(self.hypervisor, f"dnsmasq of vni {vni} wrote no pid file in {START_S:g} s")
            time.sleep(0.01)

    def remove(self, vni: int, changes: Changes) -> None:
        """Stop the subnet's dnsmasq, delete its veth, namespace and directory."""
        name = self.names.dhcp(vni)
        space = self.names.netns(name)
        pid = self.pid(vni)
        if pid:
            _stop(pid)
            changes.removed += 1
        handle = self._inside.pop(vni, None)
        if handle is not None:
            handle.close()
        if (NETNS_DIR / space).exists():
            kill_in_netns(NETNS_DIR / space)
        try:
            for index in self.host.link_lookup(ifname=name):
                self.host.link("del", index=index)
                changes.removed += 1
            if (NETNS_DIR / space).exists():
                netns.remove(space)
                changes.removed += 1
        except (NetlinkError, OSError) as exc:
            raise DriverError(self.hypervisor, f"cannot remove DHCP namespace {name}: {exc}") from exc
        directory = self._dir(vni)
        if directory.is_dir():
            for path in directory.iterdir():
                path.unlink()
            directory.rmdir()


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def running(pid: int) -> bool:
    """Whether ``pid`` runs: a zombie has ended (our daemons are not our children, so its reaper
    is init's business, not ours)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _stop(pid: int) -> None:
    """SIGTERM, then SIGKILL after 2 s."""
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 2.0
        while running(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        if running(pid):
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def write_if_changed(path: Path, text: str) -> bool:
    """Write ``text`` (0600, by rename) unless the file holds it already; whether it wrote."""
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    tmp.replace(path)
    return True
