"""A test-driver VM's NIC: a small "guest" namespace with a veth on a subnet's bridge.

The namespace holds ``eth0``, carrying the port's MAC; its other end, named like the namespace,
is a port of the bridge, as a real VM's tap would be. ``dhcp()`` runs busybox ``udhcpc`` with
our own script (busybox has none here), which applies the address, MTU and default route and
writes what the server offered to a file, read back as a ``Lease``. Tests ping from it with
``exec_argv`` (``nsenter`` into the namespace). The compute agent plays a test-driver VM's NIC
with one (agents/compute/nics.py): ``ensure`` makes what is missing of it, idempotently, and
``run_dhcp`` keeps udhcpc running in it as a guest's DHCP client daemon (renewing its lease, and
asking again until a server answers). Names are the caller's: give them the data plane's prefix
and the test run's.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from cloudland.netclean import kill_in_netns
from cloudland_agents.network.dhcp import running, write_if_changed

NETNS_DIR = Path("/run/netns")
IFF_UP = 0x1
DHCP_START_S = 5.0  # for udhcpc to write its pid file

# udhcpc's environment: $interface, $ip, $mask (prefix length), $router, $dns, $mtu, $domain.
# The MTU first: once the address is there, the guest is configured (what tests wait for).
UDHCPC_SCRIPT = r"""#!/bin/sh
case "$1" in
deconfig)
    ip -4 address flush dev "$interface"
    ip link set "$interface" up
    ;;
bound|renew)
    [ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
    ip -4 address flush dev "$interface"
    ip address add "$ip/$mask" dev "$interface"
    [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
    printf 'ip=%s\nmask=%s\nrouter=%s\ndns=%s\nmtu=%s\ndomain=%s\n' \
        "$ip" "$mask" "$router" "$dns" "$mtu" "$domain" >"$LEASE_FILE"
    ;;
esac
exit 0
"""


@dataclass(frozen=True)
class Lease:
    """What the DHCP server gave the guest."""

    ip: str
    prefixlen: int
    router: str
    dns: tuple[str, ...]
    mtu: int
    domain: str


class GuestError(RuntimeError):
    """Raised when a guest namespace cannot be made or gets no lease; the message names it."""


class Guest:
    """Namespace ``netns`` (default ``name``) with ``eth0`` (``mac``) cabled by link ``name`` to
    bridge ``bridge`` of the caller's namespace (``host``'s)."""

    def __init__(self, host: IPRoute, name: str, bridge: str, mac: str, netns: str = "") -> None:
        if len(name) > 15:
            raise GuestError(f"guest name {name!r} is longer than a link name may be (15)")
        self.host = host
        self.name = name
        self.netns = netns or name
        self.bridge = bridge
        self.mac = mac

    def plug(self) -> Guest:
        """Make the namespace and its cable on the bridge, which must exist."""
        if not self.host.link_lookup(ifname=self.bridge):
            raise GuestError(f"guest {self.name}: no bridge {self.bridge}")
        self.ensure()
        return self

    def ensure(self) -> int:
        """Make what is missing or wrong of the namespace and its cable, with IPv6 off (no router
        solicitations to count), plugged into the bridge if it exists (else later, when it does).
        What is right is left alone; the count of objects made or corrected."""
        made = 0
        try:
            if not (NETNS_DIR / self.netns).exists():
                netns.create(self.netns)
                made += 1
            if not self.host.link_lookup(ifname=self.name):
                self.host.link("add", ifname=self.name, kind="veth",
                               peer={"ifname": "eth0", "net_ns_fd": self.netns, "address": self.mac})
                made += 1
                self.run(["sh", "-c", "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 "
                          "net.ipv6.conf.default.disable_ipv6=1; ip link set lo up; ip link set eth0 up"])
            (link,) = self.host.get_links(self.host.link_lookup(ifname=self.name)[0])
            bridge = self.host.link_lookup(ifname=self.bridge)
            if bridge and link.get_attr("IFLA_MASTER") != bridge[0]:
                self.host.link("set", index=link["index"], master=bridge[0])
                made += 1
            if not link["flags"] & IFF_UP:
                self.host.link("set", index=link["index"], state="up")
                made += 1
        except (NetlinkError, OSError) as exc:
            raise GuestError(f"guest {self.name}: cannot plug into {self.bridge}: {exc}") from exc
        return made

    def dhcp_pid(self, directory: Path) -> int:
        """The guest's udhcpc daemon (by its pid file, checked against its command line), 0 if none."""
        pidfile = directory / f"{self.name}.pid"
        try:
            pid = int(pidfile.read_text().strip() or 0)
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return 0
        return pid if str(pidfile).encode() in cmdline and running(pid) else 0

    def run_dhcp(self, directory: Path) -> bool:
        """udhcpc runs in the guest as its DHCP client daemon (files in ``directory``): it asks
        until a server answers (3 tries 1 s apart, then 2 s of rest, again and again), applies
        the lease and renews it. A daemon of its own (``setsid -f``), so an agent's restart
        leaves it running. True if it was started now, False if it ran already."""
        if self.dhcp_pid(directory):
            return False
        script = directory / "udhcpc.sh"
        write_if_changed(script, UDHCPC_SCRIPT)
        script.chmod(0o700)
        pidfile = directory / f"{self.name}.pid"
        pidfile.unlink(missing_ok=True)
        argv = ["setsid", "-f", *self.exec_argv([
            "env", f"LEASE_FILE={directory / (self.name + '.lease')}", "busybox", "udhcpc", "-i", "eth0", "-f",
            "-p", str(pidfile), "-t", "3", "-T", "1", "-A", "2", "-O", "mtu", "-s", str(script)])]
        log = directory / f"{self.name}.log"
        try:
            # Its output to a file, not a pipe: the daemon keeps what it inherits, and a pipe
            # would hold this call until the daemon ends.
            with open(log, "ab") as out:
                done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, timeout=DHCP_START_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise GuestError(f"guest {self.name}: cannot start udhcpc: {exc}") from exc
        deadline = time.monotonic() + DHCP_START_S
        while done.returncode != 0 or not self.dhcp_pid(directory):
            if done.returncode != 0 or time.monotonic() > deadline:
                raise GuestError(f"guest {self.name}: udhcpc did not start (no pid file in {DHCP_START_S:g} s): "
                                 f"{log.read_text(errors='replace')[-400:]}")
            time.sleep(0.01)
        return True

    def lease(self, directory: Path) -> Lease | None:
        """The lease the guest's daemon last applied (``run_dhcp``), None before it got one."""
        try:
            return _lease(directory / f"{self.name}.lease")
        except (OSError, KeyError, ValueError):
            return None

    def exec_argv(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the guest's network namespace."""
        return ["nsenter", f"--net={NETNS_DIR / self.netns}", "--", *argv]

    def run(self, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.exec_argv(argv), capture_output=True, text=True, timeout=timeout)

    def dhcp(self, tries: int = 5) -> Lease:
        """Ask for a lease (udhcpc, MTU requested); GuestError if none came."""
        with tempfile.TemporaryDirectory(prefix=f"{self.name}-") as scratch:
            script, lease_file = Path(scratch) / "udhcpc.sh", Path(scratch) / "lease"
            script.write_text(UDHCPC_SCRIPT)
            script.chmod(0o700)
            argv = ["env", f"LEASE_FILE={lease_file}", "busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n",
                    "-t", str(tries), "-T", "1", "-O", "mtu", "-s", str(script)]
            done = self.run(argv, timeout=tries * 4 + 5)
            if done.returncode != 0 or not lease_file.exists():
                raise GuestError(f"guest {self.name} ({self.mac}) got no lease: {(done.stderr + done.stdout)[-400:]}")
            return _lease(lease_file)

    def unplug(self, directory: Path | None = None) -> None:
        """Remove the cable and the namespace (and so every process left in it, its DHCP daemon
        too), and the daemon's files in ``directory``. Idempotent."""
        for index in self.host.link_lookup(ifname=self.name):
            try:
                self.host.link("del", index=index)
            except NetlinkError:
                pass
        if (NETNS_DIR / self.netns).exists():
            kill_in_netns(NETNS_DIR / self.netns)
            netns.remove(self.netns)
        if directory is not None:
            for suffix in (".pid", ".lease", ".log"):
                (directory / f"{self.name}{suffix}").unlink(missing_ok=True)


def _lease(path: Path) -> Lease:
    fields = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return Lease(fields["ip"], int(fields["mask"]), fields["router"], tuple(fields["dns"].split()),
                 int(fields["mtu"] or 0), fields["domain"])

