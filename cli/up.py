"""``cloudland up``: the all-in-one cloud that ``make run`` starts: the tree, then the REST API beside it.

The tree starts as ``cloudland tree up`` starts it; the API is ``python -m cloudland_api``
as a child process pointed at the root's gRPC endpoint, with its state in the same
directory. Ctrl-C or SIGTERM stops the API, then the tree, by pid, and exits 0. Once both
are up, a part that dies is started again and the other keeps running (supervise.py); only
a failure to come up at all ends ``up`` with exit 1, saying which part failed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import httpx2 as httpx
import typer
from rich.text import Text

from cloudland.config import DEFAULT_GRPC
from cloudland.errors import CloudLandError, ConfigError
from cloudland.topology import DEFAULT_FANOUT
from cloudland_cli import hostnet
from cloudland_cli.cluster import LauncherExec
from cloudland_cli.common import EXIT_FAILED, EXIT_USAGE, err, fail, out
from cloudland_cli.restclient import DEFAULT_ENDPOINT
from cloudland_cli.supervise import Supervised
from cloudland_cli.start import (
    Hostfile,
    LeavesPerHost,
    Listen,
    cluster_settings,
    interrupt,
    start_hosts,
    start_root,
    stop_child,
    stop_local_agent,
    topology_grid,
    wait_for_tree,
)

API_READY_TIMEOUT_S = 120.0
WATCH_EVERY_S = 0.2   # how soon a dead part is noticed
CREDENTIALS_FILE = "admin-credentials"  # cloudland_api.security.ADMIN_CREDENTIALS_FILE


def api_environment(grpc: str, state_dir: Path, host: str, port: int, pki_dir: Path) -> dict[str, str]:
    """The environment of the API child: our own plus where the tree, its credentials and its state are."""
    env = dict(os.environ)
    env["CLOUDLAND_API_ROOT_ENDPOINT"] = grpc
    env["CLOUDLAND_PKI"] = str(pki_dir.resolve())  # the control certificate it presents to the root
    env["CLOUDLAND_API_STATE_DIR"] = str(state_dir)
    env["CLOUDLAND_API_HOST"] = host
    env["CLOUDLAND_API_PORT"] = str(port)
    # One state directory for both parts; an operator's own database URL wins.
    env.setdefault("CLOUDLAND_API_DATABASE_URL", f"sqlite:///{state_dir / 'cloudland.db'}")
    return env


def start_api(grpc: str, state_dir: Path, host: str, port: int, pki_dir: Path) -> subprocess.Popen[bytes]:
    """``python -m cloudland_api`` in its own process group, its output in ``<state_dir>/api.out``."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / "api.out", "ab") as api_out:
        return subprocess.Popen([sys.executable, "-m", "cloudland_api"],
                                env=api_environment(grpc, state_dir, host, port, pki_dir),
                                process_group=0, stdout=api_out, stderr=subprocess.STDOUT)


def wait_for_api(child: subprocess.Popen[bytes], url: str, timeout: float = API_READY_TIMEOUT_S) -> bool:
    """True once ``url`` answers HTTP; False if the child exits or ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    with err.status("starting the API…"):
        while child.poll() is None and time.monotonic() < deadline:
            try:
                # Not 1 s: the first answer builds the OpenAPI document, which took longer than
                # that for every try of 120 s on a 2-core machine at load 60-80 (issue 13's lab runs).
                httpx.get(f"{url}/openapi.json", timeout=max(1.0, min(10.0, deadline - time.monotonic())))
                return True
            except httpx.TransportError:
                time.sleep(0.2)
    return False


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def _print_banner(grpc: str, url: str, state_dir: Path, topo: object, default_endpoint: bool,
                  network_note: str = "") -> None:
    out.print(Text("CloudLand is up", style="bold green"), Text(f"API {url}   tree gRPC {grpc}"))
    out.print(topology_grid(topo))  # type: ignore[arg-type]
    if network_note:
        out.print(network_note)
    out.print(f"API docs:          {url}/docs")
    out.print(f"admin credentials: {state_dir / CREDENTIALS_FILE} (mode 0600)")
    cli = ".venv/bin/cloudland"
    login = f"{cli} login"
    if not default_endpoint:
        out.print("Try in another terminal:")
        out.print(f"  {cli} configure --endpoint {url}", style="bold")
    else:
        out.print("Try in another terminal:")
    if state_dir != Path("var"):
        login += f" --credentials {state_dir / CREDENTIALS_FILE}"
    for line in (
        login,
        f"{cli} flavor create small --vcpus 1 --memory-mib 512 --disk-gib 1",
        f"head -c 1M /dev/urandom > /tmp/tiny.img && {cli} image upload /tmp/tiny.img --name tiny --format raw",
        f"{cli} vm create web --flavor small --image tiny --count 20",
        f"{cli} vm list",
        f"{cli} hyper list",
        f"{cli} vm exec web-1 -- busybox ping -c 3 10.0.0.3",
        f"{cli} floating-ip create --external external --vm web-1",
        f"{cli} secgroup rule add default --protocol icmp --remote-cidr 0.0.0.0/0",
        f"{cli} vm stop --name 'web-*'",
        f"{cli} vm delete --name 'web-*'",
    ):
        out.print(f"  {line}", style="bold")
    out.print(f"Logs: {state_dir}/api.out, {state_dir}/root.out and {state_dir}/logs/<rank>.log")
    out.print("Ctrl-C stops the API, then the tree.")


def up(
    # None defaults: an unset option leaves CLOUDLAND_* (then the embedded default) in force.
    hypervisors: Annotated[int | None, typer.Option(help="Hypervisors in the tree [default: 100].")] = None,
    fanout: Annotated[int | None, typer.Option(help=f"Children per node; 0 is flat [default: {DEFAULT_FANOUT}].")] = None,
    per_leaf: Annotated[int | None, typer.Option(help="Hypervisors per leaf rank; 0 chooses [default: 0].")] = None,
    grpc: Annotated[str | None, typer.Option(envvar="CLOUDLAND_GRPC", help="The root's gRPC address.")] = None,
    state_dir: Annotated[Path | None, typer.Option(help="State of tree and API [default: var].")] = None,
    api_host: Annotated[str, typer.Option(envvar="CLOUDLAND_API_HOST", help="Address the API listens on.")]
    = "127.0.0.1",
    api_port: Annotated[int, typer.Option(envvar="CLOUDLAND_API_PORT", min=1, max=65535, help="API port.")] = 8080,
    hostfile: Hostfile = None,
    listen: Listen = None,
    launcher_exec: LauncherExec = None,
    leaves_per_host: LeavesPerHost = 1,
) -> None:
    """Start the cloud: the message tree, then the REST API on it; run until Ctrl-C.

    Without --hostfile it is the all-in-one cloud; with it, this machine is the controller
    and MPI's launcher starts a host agent on each listed host (README, "Running a cluster").
    """
    address = grpc or DEFAULT_GRPC
    try:
        settings, hosts = cluster_settings(hostfile, listen, hypervisors=hypervisors, fanout=fanout,
                                           per_leaf=per_leaf, grpc=address, state_dir=state_dir)
        settings, network_note = hostnet.choose(settings, cluster=bool(hosts))
        external = hostnet.external_wanted(settings, cluster=bool(hosts))
    except ConfigError as exc:
        fail(EXIT_USAGE, str(exc))
    url = f"http://{api_host}:{api_port}"
    root_part = Supervised("the tree's root", lambda: start_root(settings), settings.state_dir / "root.pid",
                           settings.state_dir / "root.out")
    api_part = Supervised("the API", lambda: start_api(address, settings.state_dir, api_host, api_port,
                                                        settings.pki_dir),
                          settings.state_dir / "api.pid", settings.state_dir / "api.out")
    api: subprocess.Popen[bytes] | None = None
    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        # Before the tree, whose hypervisors join it; in the try, whose stop removes it (hostnet.clean).
        external_note = hostnet.external(settings, external)
        network_note = "\n".join(note for note in (network_note, external_note) if note)
        tree = root_part.launch()
        if hosts:
            try:
                start_hosts(tree, address, settings, hosts, leaves_per_host, launcher_exec)
            except CloudLandError as exc:
                fail(EXIT_FAILED, f"{exc}; stopped the root")
        topo = wait_for_tree(tree, address, settings.pki_dir)
        if topo is None:
            fail(EXIT_FAILED, f"the tree's root exited with code {tree.returncode} before the tree was ready "
                  f"(see {settings.state_dir}/root.out)")
        api = api_part.launch()
        if not wait_for_api(api, url):
            why = f"exited with code {api.returncode}" if api.poll() is not None else "did not answer"
            fail(EXIT_FAILED, f"the API {why} at {url}; stopped the tree. "
                  f"{_tail(settings.state_dir / 'api.out')}")
        # The CLI's own default: any other URL (another port or --api-host) needs `configure`.
        _print_banner(address, url, settings.state_dir, topo, url == DEFAULT_ENDPOINT, network_note)
        # From here on a part that dies is started again, the other left running (supervise.py).
        while True:
            for part in (root_part, api_part):
                line = part.check(time.monotonic())
                if line:
                    err.print(line)
            time.sleep(WATCH_EVERY_S)
    except KeyboardInterrupt:
        err.print("stopping the API, then the tree…")
        raise typer.Exit(0) from None
    finally:
        # API first: it must not dispatch into a tree that is going away.
        if api_part.proc is not None:
            stop_child(api_part.proc)
        if root_part.proc is not None:
            stop_child(root_part.proc)
        if not hosts:
            stop_local_agent(settings.state_dir)
        removed = hostnet.clean(settings)  # namespaces, links, dnsmasq of its simulated hypervisors
        if removed:
            err.print(f"removed {len(removed)} namespaces and links of tenant networks "
                      f"({settings.network_prefix}*)")
        for sig, handler in previous.items():
            signal.signal(sig, handler)
