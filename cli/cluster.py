"""``cloudland cluster``: the hosts of a multi-host tree (proto/README.md §10.4).

The operator starts the root on the controller (``cloudland up --hostfile FILE --listen IP:PORT``
or ``cloudland tree up`` with the same options), which runs MPI's launcher once to start one host
agent per host. After that no launcher is involved: ``join`` starts agents on more hosts, the
same way, and ``remove`` tells one to stop. Exit codes as for ``cloudland tree``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cloudland import mpienv
from cloudland.client import RootClient
from cloudland.config import DEFAULT_GRPC
from cloudland.errors import CloudLandError, ConfigError, NotFound, RootUnreachable
from cloudland_cli.common import EXIT_FAILED, EXIT_UNREACHABLE, EXIT_USAGE, out
from cloudland_cli.settings import root_endpoint, root_pki

LAUNCH_TIMEOUT_S = 120.0

cluster_app = typer.Typer(no_args_is_help=True)


def read_hostfile(path: Path) -> list[str]:
    """Host names, one per line; blank lines and ``#`` comments skipped; ``host:N`` means host.

    Raises ConfigError naming the file and line for anything else.
    """
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read the hostfile {path}: {exc.strerror}") from exc
    hosts: list[str] = []
    for number, line in enumerate(lines, 1):
        word = line.split("#", 1)[0].strip()
        if not word:
            continue
        name = word.split(":", 1)[0]
        if len(word.split()) != 1 or not name or not all(c.isalnum() or c in "-._" for c in name):
            raise ConfigError(f"{path}:{number}: expected one host name per line, got {line.strip()!r}")
        if name in hosts:
            raise ConfigError(f"{path}:{number}: host {name} is listed twice")
        hosts.append(name)
    if not hosts:
        raise ConfigError(f"the hostfile {path} lists no host")
    return hosts


def agent_command(hosts: list[str], root: str, state_dir: Path, leaves: int,
                  launcher_exec: str | None = None, pki_dir: Path | None = None) -> list[str]:
    """MPI's launcher starting one detached host agent on each host (hydra's mpiexec).

    ``-disable-auto-cleanup``: one agent's end must not take the others down (measured);
    the agents detach anyway, so the launcher ends once they have all started.
    """
    argv = [str(mpienv.bindir() / "mpiexec"), "-launcher", "ssh"]
    if launcher_exec:
        argv += ["-launcher-exec", launcher_exec]
    argv += ["-hosts", ",".join(hosts), "-n", str(len(hosts)), "-ppn", "1", "-disable-auto-cleanup",
             sys.executable, "-m", "cloudland_launcher.hostd", "--daemon", "--root", root,
             "--leaves", str(leaves), "--state-dir", str(state_dir)]
    if pki_dir is not None:  # the node certificate's directory, the same path on every host
        argv += ["--pki", str(pki_dir)]
    return argv


def start_agents(hosts: list[str], root: str, state_dir: Path, leaves: int,
                 launcher_exec: str | None = None, pki_dir: Path | None = None) -> None:
    """Run the launcher; raises CloudLandError with its output if it fails."""
    env = dict(os.environ)
    mpienv.apply(env)
    try:
        done = subprocess.run(agent_command(hosts, root, state_dir, leaves, launcher_exec, pki_dir), env=env,
                              capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise CloudLandError(f"mpiexec did not start the host agents on {', '.join(hosts)} within "
                             f"{LAUNCH_TIMEOUT_S:.0f} s") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise CloudLandError(f"mpiexec failed (exit {done.returncode}) starting host agents on "
                             f"{', '.join(hosts)}: {' / '.join(tail)}")


def _fail(code: int, message: str) -> typer.Exit:
    print(f"cloudland: {message}", file=sys.stderr)
    return typer.Exit(code)


def _root(endpoint: str | None) -> str:
    try:
        return root_endpoint(endpoint)
    except ConfigError as exc:  # an unknown profile
        raise _fail(EXIT_USAGE, str(exc)) from None


Endpoint = Annotated[str | None, typer.Option(
    envvar="CLOUDLAND_GRPC", help=f"host:port of the root [default: the profile's, else {DEFAULT_GRPC}].")]
LauncherExec = Annotated[str | None, typer.Option(
    envvar="CLOUDLAND_LAUNCHER_EXEC", help="What mpiexec runs instead of ssh to reach a host.")]


@cluster_app.command()
def hosts(endpoint: Endpoint = None) -> None:
    """The hosts whose agents joined: leaves, hypervisors, relays placed there, connected or not."""
    try:
        with RootClient(_root(endpoint), root_pki()) as client:
            reply = client.hosts()
    except RootUnreachable as exc:
        raise _fail(EXIT_UNREACHABLE, str(exc)) from None
    table = Table(title=f"hosts (root rendezvous {reply.listen})")
    for column in ("host", "address", "connected", "leaves", "hypervisors", "relays", "agent pid"):
        table.add_column(column)
    for host in reply.hosts:
        relays = " ".join(f"[{r.first_leaf}:{r.end_leaf})" for r in host.relays)
        table.add_row(host.name, host.address, "yes" if host.connected else "NO", _span(host.leaves),
                      _span(host.hypervisors), relays, str(host.pid))
    out.print(table)
    if any(not h.connected for h in reply.hosts):
        raise typer.Exit(EXIT_FAILED)


@cluster_app.command()
def join(
    names: Annotated[list[str], typer.Argument(help="Host names, as the launcher reaches them.")],
    endpoint: Endpoint = None,
    leaves: Annotated[int, typer.Option(min=0, help="Leaf ranks per host; 0 takes every free slot.")] = 1,
    state_dir: Annotated[Path, typer.Option(help="Each host's state directory ({host}: its name).")]
    = Path("var/hosts/{host}"),
    launcher_exec: LauncherExec = None,
) -> None:
    """Start host agents on more hosts: they join the running tree (or rejoin it, after a loss)."""
    try:
        with RootClient(_root(endpoint), root_pki()) as client:
            root = client.hosts().listen
        start_agents(names, root, Path(os.path.abspath(state_dir)), leaves, launcher_exec, root_pki().resolve())
    except RootUnreachable as exc:
        raise _fail(EXIT_UNREACHABLE, str(exc)) from None
    except CloudLandError as exc:
        raise _fail(EXIT_FAILED, str(exc)) from None
    print(f"started host agents on {', '.join(names)}; `cloudland cluster hosts` shows them join")


@cluster_app.command()
def remove(
    name: Annotated[str, typer.Argument(help="The host's name, as `cluster hosts` lists it.")],
    endpoint: Endpoint = None,
) -> None:
    """Take a host out of the tree: its agent stops its ranks; its hypervisors leave (drain first)."""
    try:
        with RootClient(_root(endpoint), root_pki()) as client:
            info = client.remove_host(name)
    except RootUnreachable as exc:
        raise _fail(EXIT_UNREACHABLE, str(exc)) from None
    except NotFound as exc:
        raise _fail(EXIT_USAGE, str(exc)) from None
    except CloudLandError as exc:
        raise _fail(EXIT_FAILED, str(exc)) from None
    print(f"host {info.name} removed: hypervisors {_span(info.hypervisors)} left the tree")


def _span(ids: object) -> str:
    values = sorted(int(i) for i in ids)  # type: ignore[attr-defined]
    if not values:
        return "-"
    if values == list(range(values[0], values[-1] + 1)) and len(values) > 2:
        return f"{values[0]}-{values[-1]}"
    return ",".join(str(v) for v in values)
