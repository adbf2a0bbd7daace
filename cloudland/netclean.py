"""What a run of simulated hypervisors with namespaces of their own left on this machine, by prefix.

With ``CLOUDLAND_NETWORK=netns`` (agents/network/hostns.py) each simulated hypervisor with a
tenant port owns a namespace ``<prefix>hv<id>``; the DHCP servers and test guests beside it are
``<prefix>hv<id>.<link>``, and the underlay is the bridge ``<prefix>u`` with one veth
``<prefix>u<id>`` per hypervisor in the machine's namespace; with an external network
(``cloudland up`` as root), the provider bridge ``<prefix>e``, which holds the machine's address
on it, with one veth ``<prefix>e<id>`` per hypervisor. ``cloudland up`` removes all of
them when it stops (and ``cloudland down`` what a killed one left): every process in those
namespaces first (dnsmasq, udhcpc), then the namespaces, then the links. Only names of exactly
these shapes and of that prefix are touched. Here, not in the agents, because the CLI (which
imports no agent code) removes them; the agents kill with ``kill_in_netns`` too.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

NETNS_DIR = Path("/run/netns")


def provider_bridge(prefix: str) -> str:
    """The run's provider bridge: the machine's (``cloudland up``'s external network), and its
    extension of the same name in each simulated hypervisor's namespace."""
    return f"{prefix}e"


def kill_in_netns(path: Path) -> None:
    """SIGKILL every process whose network namespace is the one at ``path`` (a namespace of ours)."""
    target = os.stat(path)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            try:
                os.kill(int(entry), signal.SIGKILL)
            except ProcessLookupError:
                pass


def run_namespaces(prefix: str) -> list[str]:
    """The namespaces of the run with network prefix ``prefix``: hypervisors' and those beside them."""
    shape = re.compile(rf"{re.escape(prefix)}hv[0-9]+(\.[a-z0-9]+)?")
    names = os.listdir(NETNS_DIR) if NETNS_DIR.is_dir() else []
    return sorted(name for name in names if shape.fullmatch(name))


def run_links(prefix: str) -> list[str]:
    """The links of the run in this namespace: its underlay and provider bridges and the
    hypervisors' veths onto them, the bridges last."""
    listed = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    shape = re.compile(rf"{re.escape(prefix)}[ue][0-9]*")
    found = (line.split(":")[1].strip().split("@")[0] for line in listed.splitlines() if line.count(":") >= 2)
    bridges = (f"{prefix}u", provider_bridge(prefix))
    return sorted((name for name in found if shape.fullmatch(name)), key=lambda n: (n in bridges, n))


def guest_namespace(hypervisor: int, mac: str) -> str | None:
    """The namespace of the test guest that plays the NIC ``mac`` of simulated hypervisor
    ``hypervisor`` (agents/compute/nics.py), whatever the run's prefix; None if there is none."""
    tail = mac.lower().replace(":", "")[4:]
    shape = re.compile(rf"[a-z][a-z0-9]{{0,5}}hv{hypervisor}\.[a-z][a-z0-9]{{0,5}}t{re.escape(tail)}")
    names = os.listdir(NETNS_DIR) if NETNS_DIR.is_dir() else []
    found = [name for name in names if shape.fullmatch(name)]
    return found[0] if len(found) == 1 else None


def remove_run(prefix: str) -> list[str]:
    """Remove every namespace (and every process in it) and underlay link of the run; what was removed."""
    removed: list[str] = []
    for name in run_namespaces(prefix):
        try:
            kill_in_netns(NETNS_DIR / name)
        except FileNotFoundError:
            continue
        if subprocess.run(["ip", "netns", "delete", name], capture_output=True).returncode == 0:
            removed.append(name)
    for name in run_links(prefix):  # the veths go with their namespaces; the bridge last
        if subprocess.run(["ip", "link", "delete", name], capture_output=True).returncode == 0:
            removed.append(name)
    return removed
