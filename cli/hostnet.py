"""``make run``'s tenant networks on this machine: real, where it can, for ``cloudland up``.

The all-in-one cloud's hypervisors are simulated; on the fake data plane their VMs get addresses
but no packet flows. When ``up`` runs as root on a kernel with VXLAN, bridges and namespaces
(and dnsmasq, busybox and nsenter are installed), and the operator chose no data plane
(``CLOUDLAND_NETWORK`` unset), it picks ``netns``: each simulated hypervisor with a VM on a
network gets a namespace of its own, and VMs on different hypervisors ping each other over
VXLAN (agents/network/hostns.py). The run's name prefix is kept in ``<state>/network-prefix``,
made at the first start, so two clouds on one machine never touch each other's pieces and a
restart finds its own; ``up`` removes them all when it stops (cloudland/netclean.py).
"""

from __future__ import annotations

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
    hypervisors' networks. ``up`` removes them itself when it stops; this is for one that was killed. Refused while the
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
