"""A test-driver VM's NIC: a small "guest" namespace with a veth on a subnet's bridge.

The namespace holds ``eth0``, carrying the port's MAC; its other end, named like the namespace,
is a port of the bridge, as a real VM's tap would be. ``dhcp()`` runs busybox ``udhcpc`` with
our own script (busybox has none here), which applies the address, MTU and default route and
writes what the server offered to a file, read back as a ``Lease``. Tests ping from it with
``exec_argv`` (``nsenter`` into the namespace); the compute agent can use it for VMs without
QEMU. Names are the caller's: give them the data plane's prefix and the test run's.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from cloudland_agents.network.dhcp import kill_in_netns

NETNS_DIR = Path("/run/netns")

# udhcpc's environment: $interface, $ip, $mask (prefix length), $router, $dns, $mtu, $domain.
UDHCPC_SCRIPT = r"""#!/bin/sh
case "$1" in
deconfig)
    ip -4 address flush dev "$interface"
    ip link set "$interface" up
    ;;
bound|renew)
    ip -4 address flush dev "$interface"
    ip address add "$ip/$mask" dev "$interface"
    [ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
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
    """Namespace ``name`` with ``eth0`` (``mac``) cabled to bridge ``bridge`` of the caller's namespace."""

    def __init__(self, host: IPRoute, name: str, bridge: str, mac: str) -> None:
        if len(name) > 15:
            raise GuestError(f"guest name {name!r} is longer than a link name may be (15)")
        self.host = host
        self.name = name
        self.bridge = bridge
        self.mac = mac

    def plug(self) -> Guest:
        """Make the namespace and its cable, with IPv6 off (no router solicitations to count)."""
        try:
            bridge = self.host.link_lookup(ifname=self.bridge)
            if not bridge:
                raise GuestError(f"guest {self.name}: no bridge {self.bridge}")
            netns.create(self.name)
            self.host.link("add", ifname=self.name, kind="veth",
                           peer={"ifname": "eth0", "net_ns_fd": self.name, "address": self.mac})
            index = self.host.link_lookup(ifname=self.name)[0]
            self.host.link("set", index=index, master=bridge[0], state="up")
        except (NetlinkError, OSError) as exc:
            raise GuestError(f"guest {self.name}: cannot plug into {self.bridge}: {exc}") from exc
        self.run(["sh", "-c", "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1;"
                  " ip link set lo up; ip link set eth0 up"])
        return self

    def exec_argv(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the guest's network namespace."""
        return ["nsenter", f"--net={NETNS_DIR / self.name}", "--", *argv]

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
            fields = dict(line.split("=", 1) for line in lease_file.read_text().splitlines() if "=" in line)
        return Lease(fields["ip"], int(fields["mask"]), fields["router"], tuple(fields["dns"].split()),
                     int(fields["mtu"] or 0), fields["domain"])

    def unplug(self) -> None:
        """Remove the cable and the namespace (and so every process left in it). Idempotent."""
        for index in self.host.link_lookup(ifname=self.name):
            try:
                self.host.link("del", index=index)
            except NetlinkError:
                pass
        if (NETNS_DIR / self.name).exists():
            kill_in_netns(NETNS_DIR / self.name)
            netns.remove(self.name)

