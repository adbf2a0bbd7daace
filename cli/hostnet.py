"""``make run``'s tenant networks on this machine: real, where it can, for ``cloudland up``.

The all-in-one cloud's hypervisors are simulated; on the fake data plane their VMs get addresses
but no packet flows. When ``up`` runs as root on a kernel with VXLAN, bridges and namespaces
(and dnsmasq, busybox and nsenter are installed), and the operator chose no data plane
(``CLOUDLAND_NETWORK`` unset), it picks ``netns``: each simulated hypervisor with a VM on a
network gets a namespace of its own, and VMs on different hypervisors ping each other over
VXLAN (agents/network/hostns.py). The run's name prefix is kept in ``<state>/network-prefix``,
made at the first start, so two clouds on one machine never touch each other's pieces and a
restart finds its own; ``up`` removes them all when it stops (cloudland/netclean.py).

On that plane ``up`` also gives the cloud an external network on this machine (``external``):
``CLOUDLAND_API_EXTERNAL_NETWORK`` (``make run``: 198.51.100.0/24) becomes the bridge
``<prefix>e`` holding the network's first address, which each simulated hypervisor's namespace
joins (agents/network/hostns.py), and the API makes the external network ``external`` on it with
a router for the default network (api/services/routers.py ``make_default_external``): a VM's
floating IP answers this machine, and VMs reach it by SNAT. A network that overlaps one this
machine has is not made (the banner says which), nor one without that plane.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import string
import subprocess
import time
from pathlib import Path
from typing import Annotated

import typer

from cloudland import procinfo
from cloudland.config import NETWORK_PREFIX_RE, TreeSettings
from cloudland.errors import ConfigError

PREFIX_FILE = "network-prefix"
EXTERNAL_NETWORK = "CLOUDLAND_API_EXTERNAL_NETWORK"  # the API's setting, which up reads too
EXTERNAL_BRIDGE = "CLOUDLAND_API_EXTERNAL_BRIDGE"
AGENT_GONE_S = 10.0
TOOLS = ("ip", "nsenter", "dnsmasq", "busybox", "unshare")


def why_not() -> str:
    """Why this machine cannot give simulated hypervisors namespaces of their own ("" if it can)."""
    if os.geteuid() != 0:
        return "not running as root"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed"
    # In a namespace of its own that vanishes with the command: nothing is left behind.
    probe = subprocess.run(["unshare", "--net", "sh", "-c", "ip link add name pb0 type bridge && "
                            "ip link add name pv0 type vxlan id 1 dstport 4789 && ip link add name pe0 type veth peer name pe1"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"the kernel cannot make bridges, VXLAN devices or veths here: {probe.stderr.strip()[-200:]}"
    return ""


def run_prefix(state_dir: Path) -> str:
    """The network prefix of the cloud in ``state_dir``: kept there (0600), made at the first start."""
    path = state_dir / PREFIX_FILE
    try:
        kept = path.read_text().strip()
        if NETWORK_PREFIX_RE.fullmatch(kept):
            return kept
    except OSError:
        pass
    prefix = "n" + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(4))
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(prefix + "\n")
    return prefix


def choose(settings: TreeSettings, cluster: bool) -> tuple[TreeSettings, str]:
    """The data plane ``up`` runs with, and a line saying what it means for the banner.

    Only the all-in-one cloud of simulated hypervisors, and only if the operator chose none.
    The choice reaches the root (and so the leaves) through its environment, ``CLOUDLAND_NETWORK``
    and ``CLOUDLAND_NETWORK_PREFIX``, as an operator's own would."""
    if cluster or settings.driver != "test" or settings.network not in ("", "netns"):
        return settings, ""
    reason = why_not()
    if reason and settings.network == "netns":
        raise ConfigError(f"CLOUDLAND_NETWORK=netns needs namespaces of this machine: {reason}")
    if reason:
        return settings, (f"tenant networks: simulated in memory ({reason}): VMs get addresses, "
                          "but no packet flows between them")
    prefix = settings.network_prefix if "CLOUDLAND_NETWORK_PREFIX" in os.environ else run_prefix(settings.state_dir)
    os.environ["CLOUDLAND_NETWORK"] = "netns"
    os.environ["CLOUDLAND_NETWORK_PREFIX"] = prefix
    return settings.replace(network="netns", network_prefix=prefix), (
        f"tenant networks: real (each simulated hypervisor with a VM on a network gets a namespace "
        f"{prefix}hv<id>); a VM pings another: .venv/bin/cloudland vm exec NAME -- busybox ping -c 3 ADDRESS")


def external_wanted(settings: TreeSettings, cluster: bool) -> ipaddress.IPv4Network | None:
    """The external network ``up`` is to make on this machine (``CLOUDLAND_API_EXTERNAL_NETWORK``),
    None when none is asked or this is not the all-in-one cloud of simulated hypervisors (a
    cluster's hosts have provider bridges of their own); ConfigError when it is no network."""
    wanted = os.environ.get(EXTERNAL_NETWORK, "").strip()
    if cluster or settings.driver != "test" or not wanted:
        return None
    try:
        network = ipaddress.IPv4Network(wanted)
    except ValueError as exc:
        raise ConfigError(f"{EXTERNAL_NETWORK} must be an IPv4 network like 198.51.100.0/24, or empty: {exc}") from exc
    if network.prefixlen > 29:
        raise ConfigError(f"{EXTERNAL_NETWORK} {network} is too small: at most /29, for the machine's address, "
                          "routers' SNAT addresses and floating IPs")
    return network


def external(settings: TreeSettings, network: ipaddress.IPv4Network | None) -> str:
    """Make the external network on this machine (the module's docstring) and tell the API its
    bridge; the banner's line about it ("" when none was asked). When it cannot be made the
    API is not told of it either, and the line says why."""
    if network is None:
        return ""
    bridge = f"{settings.network_prefix}e"  # cloudland/netclean.py provider_bridge
    why = ("it needs the namespaces' data plane" if settings.network != "netns"
           else _overlap(network, bridge) or _make_bridge(bridge, network))
    if why:
        os.environ.pop(EXTERNAL_NETWORK, None)
        return f"external network {network}: not made ({why}); floating IPs need it"
    os.environ[EXTERNAL_BRIDGE] = bridge
    return (f"external network 'external' {network}: this machine is {network.network_address + 1} on bridge "
            f"{bridge}; a VM's floating IP answers here: ping it")


def _ip_json(*args: str) -> list[dict[str, object]]:
    done = subprocess.run(["ip", "-j", "-4", *args], capture_output=True, text=True)
    return list(json.loads(done.stdout or "[]")) if done.returncode == 0 else []


def _overlap(network: ipaddress.IPv4Network, bridge: str) -> str:
    """What of this machine's (an address, a route) overlaps ``network``, except on ``bridge``; "" if nothing."""
    for link in _ip_json("addr", "show"):
        for address in link.get("addr_info", []):  # type: ignore[attr-defined]
            have = ipaddress.IPv4Interface(f"{address['local']}/{address['prefixlen']}")
            if link["ifname"] != bridge and have.network.overlaps(network):
                return f"this machine has {have} on {link['ifname']}"
    for route in _ip_json("route", "show"):
        dst = str(route.get("dst", "default"))
        if dst != "default" and route.get("dev") != bridge and ipaddress.IPv4Network(dst).overlaps(network):
            return f"this machine routes {dst} via {route.get('dev')}"
    return ""


def _make_bridge(bridge: str, network: ipaddress.IPv4Network) -> str:
    """The bridge, up, with the network's first address (what is there already is kept); "" or why not."""
    address = f"{network.network_address + 1}/{network.prefixlen}"
    steps = ([] if _ip_json("link", "show", "dev", bridge) else
             [["link", "add", "name", bridge, "type", "bridge", "stp_state", "0", "nf_call_iptables", "0"]])
    steps += [["link", "set", "dev", bridge, "up"], ["addr", "replace", address, "dev", bridge]]
    for step in steps:
        done = subprocess.run(["ip", *step], capture_output=True, text=True)
        if done.returncode != 0:
            return f"ip {' '.join(step)}: {done.stderr.strip()}"
    return ""


def clean(settings: TreeSettings) -> list[str]:
    """Remove what the run's simulated hypervisors made on this machine (netns only)."""
    if settings.network != "netns":
        return []
    from cloudland.netclean import remove_run

    deadline = time.monotonic() + AGENT_GONE_S  # its leaves' repairs must not make anything again
    while procinfo.local_host_agent(settings.state_dir)[0] and time.monotonic() < deadline:
        time.sleep(0.1)

    return remove_run(settings.network_prefix)


def down(state_dir: Annotated[Path, typer.Option(help="The cloud's state [default: var].")] = Path("var")) -> None:
    """Remove what a killed all-in-one cloud left on this machine: its networks' namespaces and links.

    The namespaces (and the dnsmasq and DHCP clients in them) and underlay links of its simulated
    hypervisors' networks, and its external network's bridge (with the machine's address on it). ``up`` removes them itself when it stops; this is for one that was killed. Refused while the
    cloud's root or host agent still runs: its leaves would make them again."""
    from cloudland.netclean import remove_run
    from cloudland_cli.common import EXIT_USAGE, fail, out

    try:
        prefix = (state_dir / PREFIX_FILE).read_text().strip()
    except OSError:
        prefix = ""
    if not NETWORK_PREFIX_RE.fullmatch(prefix):
        fail(EXIT_USAGE, f"no cloud with real tenant networks in {state_dir} (no {state_dir / PREFIX_FILE})")
    try:
        root = int((state_dir / "root.pid").read_text().strip() or 0)
    except (OSError, ValueError):
        root = 0
    running = [what for what, pid in (("root", root), ("host agent", procinfo.local_host_agent(state_dir)[0]))
               if pid and procinfo.alive(pid) and (what != "root" or "cloudland_launcher" in " ".join(
                   procinfo.argv_of(pid)))]
    if running:
        fail(EXIT_USAGE, f"the cloud in {state_dir} still runs ({', '.join(running)}): stop it first (Ctrl-C)")
    removed = remove_run(prefix)
    out.print(f"removed {len(removed)} namespaces and links of {prefix}*" if removed else f"nothing of {prefix}* left")
