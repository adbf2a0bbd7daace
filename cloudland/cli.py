"""The ``cloudland`` command line: start the message tree and talk to its root.

``cloudland up`` (cli_up.py) starts tree and REST API together; the commands that talk
to the API (configure, login, flavor, image, key, hyper, vm, job) are in cli_cloud.py and
cli_vm.py, with their own exit codes (cli_common.py). Exit codes of the ``tree`` commands:

    0  success: every reply OK (health: every hypervisor's leaf OK)
    1  some reply not OK, or the root rank failed
    2  bad usage or bad input (target spec, --args), one line on stderr
    3  the root's gRPC endpoint does not answer, one line on stderr
"""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, NoReturn

import typer
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from cloudland import operations
from cloudland.client import RootClient
from cloudland.config import DEFAULT_GRPC, TreeSettings
from cloudland.errors import CloudLandError, ConfigError, InvalidRequest, RootUnreachable
from cloudland.topology import DEFAULT_FANOUT, NodeRange
from cloudland_proto.v1 import envelope_pb2 as pb
from cloudland_proto.v1 import root_pb2

EXIT_NOT_OK, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3
MAX_TARGET_IDS = 1_000_000
MAX_HYPERVISOR_ID = 2**32 - 1  # Targets carries uint32 ids (envelope.proto)
STOP_GRACE_S = 15.0
SHOWN_ERRORS = 10
SHOWN_EVENTS = 10

_ID_OR_RANGE = re.compile(r"(\d+)(?:\s*-\s*(\d+))?")
_STYLE = {"OK": "green", "STARTING": "cyan", "SLOW": "yellow"}  # anything else is red

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
tree_app = typer.Typer(no_args_is_help=True)
app.add_typer(tree_app, name="tree")
from cloudland.cli_cluster import cluster_app  # noqa: E402 - beside the tree commands it extends

app.add_typer(cluster_app, name="cluster", help="The hosts of a multi-host tree: list, join, remove.")
# Markup off: error texts and node names contain brackets ("relay[0:32)").
out = Console(highlight=False, markup=False)
err = Console(stderr=True, highlight=False, markup=False)


def parse_targets(spec: str | None) -> list[int] | None:
    """Sorted unique hypervisor ids from a spec like ``"1,2,5-9"``; None (broadcast) when empty.

    Raises InvalidRequest quoting the bad part: a negative id, a reversed range,
    garbage, an id beyond uint32, or more than MAX_TARGET_IDS ids.
    """
    if spec is None or not spec.strip():
        return None
    ids: set[int] = set()
    for raw in spec.split(","):
        part = raw.strip()
        match = _ID_OR_RANGE.fullmatch(part)
        if match is None:
            if part.startswith("-"):
                raise InvalidRequest(f"negative hypervisor id in target {part!r}")
            raise InvalidRequest(f"bad target {part!r} in {spec!r}: expected an id (3) or a range (5-9)")
        first = int(match[1])
        last = int(match[2]) if match[2] is not None else first
        if last < first:
            raise InvalidRequest(f"reversed range {part!r}: write {last}-{first}")
        if last > MAX_HYPERVISOR_ID:
            raise InvalidRequest(f"target {part!r} is beyond the largest hypervisor id {MAX_HYPERVISOR_ID}")
        if last - first + 1 > MAX_TARGET_IDS:
            raise InvalidRequest(f"range {part!r} spans {last - first + 1} ids, more than {MAX_TARGET_IDS}")
        ids.update(range(first, last + 1))
        if len(ids) > MAX_TARGET_IDS:
            raise InvalidRequest(f"targets {spec!r} name more than {MAX_TARGET_IDS} ids")
    return sorted(ids)


def parse_args_json(text: str | None, operation: str) -> Message | None:
    """The ``--args`` JSON object as ``operation``'s request message (its fields by name, as
    proto/v1/*.proto spell them); raises InvalidRequest for anything else."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"--args is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidRequest(f"--args must be a JSON object like '{{\"key\": 1}}', got {type(value).__name__}")
    try:
        return operations.parse(operation, value)
    except InvalidRequest as exc:
        raise InvalidRequest(f"--args is {exc}") from exc


def root_command(settings: TreeSettings) -> list[str]:
    """The argv that starts the root rank (cloudland_launcher) for ``settings``."""
    flags = {
        "--hypervisors": settings.hypervisors,
        "--fanout": settings.fanout,
        "--per-leaf": settings.per_leaf,
        "--grpc": settings.grpc,
        "--state-dir": settings.state_dir,
        "--listen": settings.listen,
    }
    argv = [sys.executable, "-m", "cloudland_launcher", *(str(x) for flag in flags.items() for x in flag)]
    return argv + (["--cluster"] if settings.cluster else [])


Hostfile = Annotated[Path | None, typer.Option(
    help="Hosts of a cluster, one name per line: MPI's launcher starts a host agent on each, "
         "and no rank runs here. Needs --listen.")]
Listen = Annotated[str | None, typer.Option(
    envvar="CLOUDLAND_LISTEN", help="IP:PORT where ranks and host agents reach the root.")]
LauncherExec = Annotated[str | None, typer.Option(
    envvar="CLOUDLAND_LAUNCHER_EXEC", help="What mpiexec runs instead of ssh to reach a host.")]
LeavesPerHost = Annotated[int, typer.Option(min=0, help="Leaf ranks per host (with --hostfile).")]


def cluster_settings(hostfile: Path | None, listen: str | None, **options: object) -> tuple[TreeSettings, list[str]]:
    """Settings for ``tree up``/``up``, and the hosts of ``hostfile`` (none: the all-in-one cloud)."""
    from cloudland.cli_cluster import read_hostfile

    if hostfile is None:
        return TreeSettings.from_env(listen=listen, **options), []
    if not listen or listen.endswith(":0"):
        raise ConfigError("--hostfile needs --listen IP:PORT (a fixed port on the hosts' network), "
                          "where the hosts' agents reach the root")
    return TreeSettings.from_env(listen=listen, cluster=True, **options), read_hostfile(hostfile)


def start_hosts(child: subprocess.Popen[bytes], endpoint: str, settings: TreeSettings, hosts: list[str],
                leaves: int, launcher_exec: str | None) -> None:
    """Once the root answers, start one host agent per host through MPI's launcher."""
    from cloudland.cli_cluster import start_agents

    with out.status(f"starting host agents on {len(hosts)} hosts…"):
        while child.poll() is None:
            with suppress(RootUnreachable), RootClient(endpoint) as client:
                client.hosts(timeout=1.0)
                break
            time.sleep(0.1)
        if child.poll() is not None:
            return
        # Each host keeps its own state, at the same path on every host (as MPI wants its install).
        start_agents(hosts, settings.listen, settings.state_dir.resolve() / "hosts" / "{host}", leaves, launcher_exec)


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


def _fail(code: int, message: str) -> NoReturn:
    typer.echo("cloudland: " + " ".join(message.split()), err=True)  # one line, whatever gRPC said
    raise typer.Exit(code)


@contextmanager
def _reported_errors(endpoint: str) -> Iterator[None]:
    try:
        yield
    except RootUnreachable as exc:
        _fail(EXIT_UNREACHABLE, f"cannot reach the root at {endpoint}: {exc}")
    except InvalidRequest as exc:
        _fail(EXIT_USAGE, str(exc))
    except CloudLandError as exc:
        _fail(EXIT_NOT_OK, str(exc))


def _print_json(value: Message | dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(operations.as_dict(value) if isinstance(value, Message) else value) + "\n")


def _styled(name: str) -> Text:
    return Text(name, style=_STYLE.get(name, "red"))


def _node(node: pb.NodeId) -> str:
    return str(NodeRange(node.first_leaf, node.end_leaf))


def _peer_state(state: int) -> Text:
    return _styled(pb.PeerState.Name(state).removeprefix("PEER_"))


@app.callback()
def cloudland() -> None:
    """CloudLand, a lightweight IaaS over an MPI message tree of hypervisor agents."""


@tree_app.callback()
def tree(
    ctx: typer.Context,
    endpoint: Annotated[str, typer.Option(envvar="CLOUDLAND_GRPC", help="host:port of the root.")] = DEFAULT_GRPC,
) -> None:
    """Start the message tree and send commands through it."""
    ctx.obj = endpoint


@tree_app.command()
def up(
    ctx: typer.Context,
    # None defaults: an unset option leaves CLOUDLAND_* (then the embedded default) in force.
    hypervisors: Annotated[int | None, typer.Option(help="Hypervisors in the tree [default: 100].")] = None,
    fanout: Annotated[int | None, typer.Option(help=f"Children per node; 0 is flat [default: {DEFAULT_FANOUT}].")] = None,
    per_leaf: Annotated[int | None, typer.Option(help="Hypervisors per leaf rank; 0 chooses [default: 0].")] = None,
    grpc: Annotated[str | None, typer.Option(help="Address to serve on [default: --endpoint].")] = None,
    state_dir: Annotated[Path | None, typer.Option(help="Where agents keep their state [default: var].")] = None,
    heartbeat: Annotated[float | None, typer.Option(help="Seconds between heartbeats.")] = None,
    hostfile: Hostfile = None,
    listen: Listen = None,
    launcher_exec: LauncherExec = None,
    leaves_per_host: LeavesPerHost = 1,
) -> None:
    """Start the root rank, wait until every rank is up, then run until Ctrl-C."""
    address = grpc or ctx.obj
    try:
        settings, hosts = cluster_settings(
            hostfile, listen, hypervisors=hypervisors, fanout=fanout, per_leaf=per_leaf,
            grpc=address, state_dir=state_dir, heartbeat_s=heartbeat,
        )
    except ConfigError as exc:
        _fail(EXIT_USAGE, str(exc))
    child = start_root(settings, heartbeat)
    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        if hosts:
            try:
                start_hosts(child, address, settings, hosts, leaves_per_host, launcher_exec)
            except CloudLandError as exc:
                _fail(EXIT_NOT_OK, f"{exc}; stopped the root")
        topo = wait_for_tree(child, address)
        if topo is None:
            _fail(EXIT_NOT_OK, f"the root exited with code {child.returncode} before the tree was ready")
        _print_banner(address, topo, settings.state_dir)
        code = child.wait()
    except KeyboardInterrupt:
        err.print("stopping the tree…")
        stop_child(child)
        raise typer.Exit(0) from None
    finally:
        stop_child(child)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code != 0:
        _fail(EXIT_NOT_OK, f"the root exited with code {code}")


def start_root(settings: TreeSettings, heartbeat: float | None = None) -> subprocess.Popen[bytes]:
    """Start the root rank in its own process group, its output in ``<state_dir>/root.out``."""
    env = dict(os.environ)
    if heartbeat is not None:
        # The launcher takes no --heartbeat flag; it reads CLOUDLAND_* like TreeSettings.from_env.
        env["CLOUDLAND_HEARTBEAT_S"] = str(heartbeat)
    # Its own process group: Ctrl-C reaches only us, and the root gets one orderly SIGTERM.
    # Its output goes to a file so that it does not garble the spinner and the banner.
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    with open(settings.state_dir / "root.out", "ab") as root_out:  # the child keeps its own copy
        return subprocess.Popen(root_command(settings), env=env, process_group=0,
                                stdout=root_out, stderr=subprocess.STDOUT)


def interrupt(signum: int, frame: FrameType | None) -> None:
    """Signal handler: SIGTERM and SIGHUP stop the foreground command as Ctrl-C does."""
    raise KeyboardInterrupt


def wait_for_tree(child: subprocess.Popen[bytes], endpoint: str) -> root_pb2.TopologyReply | None:
    """The topology once every rank is up; None if the root exits first."""
    # Short waits so a root that dies while building is noticed within a second, and a
    # fresh client each time: one channel backs off exponentially between refused
    # connects, which showed the banner seconds after the root was up.
    with out.status("building the tree…"):
        while child.poll() is None:
            with suppress(RootUnreachable), RootClient(endpoint) as client:
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


def _print_banner(endpoint: str, topo: root_pb2.TopologyReply, state_dir: Path) -> None:
    out.print(Text("CloudLand tree is up", style="bold green"), Text(f"gRPC {endpoint}"))
    out.print(topology_grid(topo))
    # Spell out --endpoint only when the other terminal would not find the root by default.
    prefix = ".venv/bin/cloudland tree"
    if endpoint != os.environ.get("CLOUDLAND_GRPC", DEFAULT_GRPC):
        prefix += f" --endpoint {endpoint}"
    out.print("Try in another terminal:")
    for rest in ("health", "broadcast ping", f"ping {min(7, max(topo.hypervisors - 1, 0))}"):
        out.print(f"  {prefix} {rest}", style="bold")
    out.print(f"Logs: {state_dir}/root.out and {state_dir}/logs/<rank>.log")
    out.print("Ctrl-C stops the tree.")


@tree_app.command()
def ping(
    ctx: typer.Context,
    hypervisor: Annotated[int, typer.Argument(min=0, help="Hypervisor id.")],
    count: Annotated[int, typer.Option("--count", "-c", min=1, help="Pings to send.")] = 5,
    timeout: Annotated[float, typer.Option(min=0.001, help="Seconds to wait for each reply.")] = 5.0,
) -> None:
    """Send COUNT unicast pings to one hypervisor and print each round trip."""
    endpoint = ctx.obj
    round_trips: list[float] = []
    with _reported_errors(endpoint), RootClient(endpoint) as client:
        client.topology()  # fails fast when the root is down; a dispatch would wait timeout + 30 s
        for seq in range(1, count + 1):
            start = time.perf_counter()
            replies = client.run("ping", hypervisor, timeout=timeout)
            elapsed_ms = (time.perf_counter() - start) * 1000
            status = pb.Status.Name(replies[0].status) if replies else "NO_REPLY"
            line = Text(f"seq {seq}  hypervisor {hypervisor}  ").append(_styled(status))
            out.print(line.append(f"  {elapsed_ms:.2f} ms  {replies[0].error if replies else ''}".rstrip()))
            if status == "OK":
                round_trips.append(elapsed_ms)
    if round_trips:
        low, middle, high = min(round_trips), statistics.median(round_trips), max(round_trips)
        out.print(f"{len(round_trips)}/{count} OK, round trip min/median/max {low:.2f}/{middle:.2f}/{high:.2f} ms")
    if len(round_trips) < count:
        raise typer.Exit(EXIT_NOT_OK)


class _Tally:
    """Replies counted per status; the ones not OK kept for the error lines."""

    def __init__(self) -> None:
        self.by_status: Counter[str] = Counter()
        self.failures: list[pb.Reply] = []

    def add(self, replies: Iterable[pb.Reply]) -> None:
        for reply in replies:
            self.by_status[pb.Status.Name(reply.status)] += 1
            if reply.status != pb.OK:
                self.failures.append(reply)

    @property
    def received(self) -> int:
        return sum(self.by_status.values())


@tree_app.command()
def broadcast(
    ctx: typer.Context,
    operation: Annotated[str, typer.Argument(help="Agent operation, e.g. ping.")],
    targets: Annotated[str | None, typer.Option(help="Hypervisor ids: 3 or 1,2,5-9 [default: all].")] = None,
    args: Annotated[str | None, typer.Option(help="Operation arguments as a JSON object.")] = None,
    timeout: Annotated[float, typer.Option(min=0.001, help="Seconds before missing replies are TIMEOUT.")] = 30.0,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per reply.")] = False,
) -> None:
    """Dispatch OPERATION to every hypervisor (or --targets) and summarise the replies."""
    endpoint = ctx.obj
    tally = _Tally()
    with _reported_errors(endpoint):
        ids = parse_targets(targets)
        arguments = parse_args_json(args, operation)
        with RootClient(endpoint) as client:
            topo = client.topology()  # also fails fast when the root is down
            hypervisors = topo.hypervisors_present or topo.hypervisors  # an older root sends no present count
            expected = hypervisors if ids is None else len(ids)
            started = time.monotonic()
            batches = client.dispatch(operation, ids[0] if ids and len(ids) == 1 else ids, arguments, timeout)
            if as_json:
                for batch in batches:
                    for reply in batch.replies:
                        _print_json(_reply_json(reply))
                    tally.add(batch.replies)
            else:
                _stream_with_progress(batches, expected, tally)
            elapsed = time.monotonic() - started
    if not as_json:
        _print_summary(tally, expected, elapsed)
    if tally.failures or tally.received < expected:
        raise typer.Exit(EXIT_NOT_OK)


def _reply_json(reply: pb.Reply) -> dict[str, Any]:
    return {
        "hypervisor": reply.hypervisor,
        "status": pb.Status.Name(reply.status),
        "result": operations.as_dict(operations.result_of(reply)),
        "error": reply.error,
    }


def _stream_with_progress(batches: Iterable[pb.ReplyBatch], expected: int, tally: _Tally) -> None:
    columns = (TextColumn("replies"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    # On stderr and transient, so stdout holds only the summary.
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("replies", total=expected)
        for batch in batches:
            tally.add(batch.replies)
            progress.update(task, completed=tally.received)


def _print_summary(tally: _Tally, expected: int, elapsed: float) -> None:
    table = Table("status", "replies", "share")
    for name, n in tally.by_status.most_common():
        table.add_row(_styled(name), str(n), f"{100 * n / max(tally.received, 1):.1f}%")
    out.print(table)
    out.print(f"{tally.received}/{expected} replies in {elapsed:.2f} s")
    if tally.received < expected:
        out.print(f"{expected - tally.received} targets sent no reply", style="red")
    for reply in sorted(tally.failures, key=lambda r: r.hypervisor)[:SHOWN_ERRORS]:
        out.print(f"hypervisor {reply.hypervisor}: {pb.Status.Name(reply.status)}: {reply.error}")
    if len(tally.failures) > SHOWN_ERRORS:
        out.print(f"… and {len(tally.failures) - SHOWN_ERRORS} more not OK")


@tree_app.command()
def health(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="The HealthReply as JSON.")] = False,
) -> None:
    """Show every relay and leaf rank, the latest events and tree-wide counters."""
    endpoint = ctx.obj
    with _reported_errors(endpoint), RootClient(endpoint) as client:
        reply = client.health()
        # A root older than the hosts' membership (proto/README.md §9) sends no present count.
        total = reply.hypervisors_present or client.topology().hypervisors
    if as_json:
        _print_json(reply)
    else:
        _print_health(reply, total)
    if reply.hypervisors_ok < total:
        raise typer.Exit(EXIT_NOT_OK)


def _print_health(reply: root_pb2.HealthReply, total: int) -> None:
    now_ms = time.time() * 1000
    # The network namespace tells emulated hosts apart (the lab); shown only when ranks differ in it.
    show_netns = len({p.netns for p in reply.peers}) > 1
    columns = ["node", "role", "state", "pid", "host", *(["net ns"] if show_netns else []), "RSS MB", "respawns",
               "heard"]
    peers = Table(*columns, title="peers")
    root_pid = reply.peers[0].pid if reply.peers else 0  # the root lists itself first (proto/README.md §8)
    # Depth-first order: each relay right above the leaves it covers.
    for peer in sorted(reply.peers, key=lambda p: (p.node.first_leaf, -p.node.end_leaf)):
        heard = f"{(now_ms - peer.last_heard_ms) / 1000:.1f} s ago" if peer.last_heard_ms else "never"
        role = "root" if peer.pid == root_pid else "relay" if peer.relay else "leaf"
        netns = [peer.netns.removeprefix("net:[").removesuffix("]")] if show_netns else []
        peers.add_row(_node(peer.node), role, _peer_state(peer.state), str(peer.pid), peer.host, *netns,
                      f"{peer.rss_kib / 1024:.1f}", str(peer.respawns), heard)
    out.print(peers)
    events = Table("time", "node", "state", "reason", title=f"last {SHOWN_EVENTS} events")
    for event in list(reply.events)[-SHOWN_EVENTS:]:
        at = time.strftime("%H:%M:%S", time.localtime(event.at_ms / 1000)) + f".{event.at_ms % 1000:03d}"
        events.add_row(at, _node(event.node), _peer_state(event.state), event.reason)
    out.print(events)
    out.print(
        f"hypervisors ok {reply.hypervisors_ok}/{total}   rejected messages {reply.rejected}   "
        f"jobs in flight {reply.jobs_in_flight}"
    )


@tree_app.command()
def topology(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="The TopologyReply as JSON.")] = False,
) -> None:
    """Show the shape of the tree."""
    endpoint = ctx.obj
    with _reported_errors(endpoint), RootClient(endpoint) as client:
        reply = client.topology()
    if as_json:
        _print_json(reply)
    else:
        out.print(topology_grid(reply))


# The REST commands and `cloudland up` import helpers from this module, hence at the end.
from cloudland import cli_cloud, cli_up  # noqa: E402

cli_cloud.register(app)
app.command("up")(cli_up.up)


def main() -> None:
    """Entry point of the ``cloudland`` console script."""
    app(prog_name="cloudland")
