"""Starting and stopping the tree's root: what ``cloudland tree up`` and ``cloudland up`` share.

The root runs as a child process in its own process group, its output in
``<state_dir>/root.out``; with a hostfile, MPI's launcher then starts one host agent per
host (cluster.py). ``stop_child`` stops the root, or the API that ``up`` starts beside it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from rich.table import Table

from cloudland import mpienv, procinfo
from cloudland.client import RootClient
from cloudland.config import TreeSettings
from cloudland.errors import ConfigError, RootUnreachable
from cloudland.statedir import make_private
from cloudland_cli.cluster import read_hostfile, start_agents
from cloudland_cli.common import out
from cloudland_proto.v1 import root_pb2

STOP_GRACE_S = 15.0


def root_command(settings: TreeSettings) -> list[str]:
    """The argv that starts the root rank (cloudland_launcher) for ``settings``."""
    flags = {
        "--hypervisors": settings.hypervisors,
        "--fanout": settings.fanout,
        "--per-leaf": settings.per_leaf,
        "--grpc": settings.grpc,
        "--state-dir": settings.state_dir,
        "--listen": settings.listen,
        "--pki": settings.pki_dir,
    }
    argv = [sys.executable, "-m", "cloudland_launcher", *(str(x) for flag in flags.items() for x in flag)]
    # An MPI job of its own, as every rank (cloudland/mpienv.py): MPICH singletons share one job
    # name, so ranks that had linked to a root would take the next singleton root for the dead
    # one and never hear from it after a restart (issue 15, supervision).
    return mpienv.rank_argv(argv + (["--cluster"] if settings.cluster else []))


Hostfile = Annotated[Path | None, typer.Option(
    help="Hosts of a cluster, one name per line: MPI's launcher starts a host agent on each, "
         "and no rank runs here. Needs --listen.")]
Listen = Annotated[str | None, typer.Option(
    envvar="CLOUDLAND_LISTEN", help="IP:PORT where ranks and host agents reach the root.")]
LeavesPerHost = Annotated[int, typer.Option(min=0, help="Leaf ranks per host (with --hostfile).")]


def cluster_settings(hostfile: Path | None, listen: str | None, **options: object) -> tuple[TreeSettings, list[str]]:
    """Settings for ``tree up``/``up``, and the hosts of ``hostfile`` (none: the all-in-one cloud)."""
    if hostfile is None:
        return TreeSettings.from_env(listen=listen, **options), []
    if not listen or listen.endswith(":0"):
        raise ConfigError("--hostfile needs --listen IP:PORT (a fixed port on the hosts' network), "
                          "where the hosts' agents reach the root")
    return TreeSettings.from_env(listen=listen, cluster=True, **options), read_hostfile(hostfile)


def start_hosts(child: subprocess.Popen[bytes], endpoint: str, settings: TreeSettings, hosts: list[str],
                leaves: int, launcher_exec: str | None) -> None:
    """Once the root answers, start one host agent per host through MPI's launcher."""
    with out.status(f"starting host agents on {len(hosts)} hosts…"):
        while child.poll() is None:
            with suppress(RootUnreachable), RootClient(endpoint, settings.pki_dir) as client:
                client.hosts(timeout=1.0)
                break
            time.sleep(0.1)
        if child.poll() is not None:
            return
        # Each host keeps its own state, and finds the node certificate, at the same paths as
        # here on every host (as MPI wants its install; the operator copies it, README).
        start_agents(hosts, settings.listen, settings.state_dir.resolve() / "hosts" / "{host}", leaves,
                     launcher_exec, settings.pki_dir.resolve())


def stop_child(child: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> int:
    """SIGTERM ``child``, wait up to ``grace_s``, then SIGKILL its process group; return its status.

    The group holds the root; its host agent and the ranks are not in it, but the root
    tells them goodbye, and a rank also leaves when its host agent is gone.
    """
    if child.poll() is not None:
        return child.returncode
    child.send_signal(signal.SIGTERM)
    # A second Ctrl-C (or SIGTERM) while waiting means "stop now", not a traceback.
    with suppress(subprocess.TimeoutExpired, KeyboardInterrupt):
        return child.wait(timeout=grace_s)
    # The group, not just the pid: ranks the root started must not outlive it.
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)
    return child.wait()


def stop_local_agent(state_dir: Path) -> None:
    """SIGTERM the all-in-one cloud's host agent if it outlived its root.

    A root that stops says goodbye and its host agent leaves; one that was killed leaves it
    running on purpose, for the next root to take over (launcher/root.py). When nothing will
    start another root, the agent (which stops its ranks) must not stay behind.
    """
    pid, _ = procinfo.local_host_agent(state_dir)
    if pid:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def start_root(settings: TreeSettings, heartbeat: float | None = None) -> subprocess.Popen[bytes]:
    """Start the root rank in its own process group, its output in ``<state_dir>/root.out``."""
    env = dict(os.environ)
    mpienv.apply(env)  # mpiexec finds its proxy on PATH
    if heartbeat is not None:
        # The launcher takes no --heartbeat flag; it reads CLOUDLAND_* like TreeSettings.from_env.
        env["CLOUDLAND_HEARTBEAT_S"] = str(heartbeat)
    # Its own process group: Ctrl-C reaches only us, and the root gets one orderly SIGTERM.
    # Its output goes to a file so that it does not garble the spinner and the banner; like
    # all of the state directory, it is ours alone (issue 15).
    make_private(settings.state_dir, qemu=settings.driver == "libvirt")
    with open(settings.state_dir / "root.out", "ab") as root_out:  # the child keeps its own copy
        return subprocess.Popen(root_command(settings), env=env, process_group=0,
                                stdout=root_out, stderr=subprocess.STDOUT)


def interrupt(signum: int, frame: FrameType | None) -> None:
    """Signal handler: SIGTERM and SIGHUP stop the foreground command as Ctrl-C does."""
    raise KeyboardInterrupt


def wait_for_tree(child: subprocess.Popen[bytes], endpoint: str, pki_dir: Path) -> root_pb2.TopologyReply | None:
    """The topology once every rank is up; None if the root exits first."""
    # Short waits so a root that dies while building is noticed within a second, and a
    # fresh client each time: one channel backs off exponentially between refused
    # connects, which showed the banner seconds after the root was up.
    with out.status("building the tree…"):
        while child.poll() is None:
            with suppress(RootUnreachable), RootClient(endpoint, pki_dir) as client:
                return client.wait_ready(timeout=1.0)
    return None


def topology_grid(topo: root_pb2.TopologyReply) -> Table:
    """The tree's shape as a two-column grid."""
    grid = Table.grid(padding=(0, 2))
    grid.add_row("hypervisors", f"{topo.hypervisors} ({topo.per_leaf} per leaf rank)")
    grid.add_row("leaf ranks", str(topo.leaves))
    grid.add_row("relays", f"{topo.relays} ({f'fan-out {topo.fanout}' if topo.fanout else 'flat'})")
    grid.add_row("depth", str(topo.depth))
    grid.add_row("built in", f"{topo.build_seconds:.2f} s" if topo.ready else "not ready")
    return grid
