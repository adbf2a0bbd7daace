"""``cloudland tree``: start the message tree and send commands through its root.

Exit codes of the ``tree`` commands (the numbers of common.py's):

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
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from google.protobuf.message import Message
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from cloudland import operations, pki
from cloudland.client import RootClient
from cloudland.config import DEFAULT_GRPC
from cloudland.errors import CloudLandError, ConfigError, InvalidRequest, RootUnreachable
from cloudland.topology import DEFAULT_FANOUT, NodeRange
from cloudland_cli.cluster import LauncherExec
from cloudland_cli.common import EXIT_FAILED, EXIT_UNREACHABLE, EXIT_USAGE, err, fail, out
from cloudland_cli.settings import root_endpoint, root_pki
from cloudland_cli.start import (
    Hostfile,
    LeavesPerHost,
    Listen,
    cluster_settings,
    interrupt,
    start_hosts,
    start_root,
    stop_child,
    topology_grid,
    wait_for_tree,
)
from cloudland_proto.v1 import envelope_pb2 as pb
from cloudland_proto.v1 import root_pb2

MAX_TARGET_IDS = 1_000_000
MAX_HYPERVISOR_ID = 2**32 - 1  # Targets carries uint32 ids (envelope.proto)
SHOWN_ERRORS = 10
SHOWN_EVENTS = 10

_ID_OR_RANGE = re.compile(r"(\d+)(?:\s*-\s*(\d+))?")
_STYLE = {"OK": "green", "STARTING": "cyan", "SLOW": "yellow"}  # anything else is red

tree_app = typer.Typer(no_args_is_help=True)


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


@contextmanager
def _reported_errors(endpoint: str) -> Iterator[None]:
    try:
        yield
    except RootUnreachable as exc:
        fail(EXIT_UNREACHABLE, f"cannot reach the root at {endpoint}: {exc}")
    except (InvalidRequest, ConfigError) as exc:
        fail(EXIT_USAGE, str(exc))
    except CloudLandError as exc:
        fail(EXIT_FAILED, str(exc))


def _print_json(value: Message | dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(operations.as_dict(value) if isinstance(value, Message) else value) + "\n")


def _styled(name: str) -> Text:
    return Text(name, style=_STYLE.get(name, "red"))


def _node(node: pb.NodeId) -> str:
    return str(NodeRange(node.first_leaf, node.end_leaf))


def _peer_state(state: int) -> Text:
    return _styled(pb.PeerState.Name(state).removeprefix("PEER_"))


@tree_app.callback()
def tree(
    ctx: typer.Context,
    endpoint: Annotated[str | None, typer.Option(
        envvar="CLOUDLAND_GRPC", help=f"host:port of the root [default: the profile's, else {DEFAULT_GRPC}].")]
    = None,
) -> None:
    """Start the message tree and send commands through it."""
    with _reported_errors(endpoint or "the profile's root"):
        ctx.obj = root_endpoint(endpoint)


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
        fail(EXIT_USAGE, str(exc))
    child = start_root(settings, heartbeat)
    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        if hosts:
            try:
                start_hosts(child, address, settings, hosts, leaves_per_host, launcher_exec)
            except CloudLandError as exc:
                fail(EXIT_FAILED, f"{exc}; stopped the root")
        topo = wait_for_tree(child, address, settings.pki_dir)
        if topo is None:
            fail(EXIT_FAILED, f"the root exited with code {child.returncode} before the tree was ready")
        _print_banner(address, topo, settings.state_dir, settings.pki_dir)
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
        fail(EXIT_FAILED, f"the root exited with code {code}")


def _print_banner(endpoint: str, topo: root_pb2.TopologyReply, state_dir: Path, pki_dir: Path) -> None:
    out.print(Text("CloudLand tree is up", style="bold green"), Text(f"gRPC {endpoint}"))
    out.print(topology_grid(topo))
    # Spell out --endpoint only when the other terminal would not find the root by default.
    prefix = ".venv/bin/cloudland tree"
    if endpoint != os.environ.get("CLOUDLAND_GRPC", DEFAULT_GRPC):
        prefix += f" --endpoint {endpoint}"
    if pki_dir.resolve() != pki.default_dir().resolve():  # where the control certificate is
        prefix = f"CLOUDLAND_PKI={pki_dir.resolve()} {prefix}"
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
    with _reported_errors(endpoint), RootClient(endpoint, root_pki()) as client:
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
        raise typer.Exit(EXIT_FAILED)


class _Tally:
    """Replies counted per status; the ones not OK kept for the error lines."""

    def __init__(self) -> None:
        self.by_status: Counter[str] = Counter()
        self.failures: list[pb.Reply] = []
        self.messages = 0  # tree messages the command cost (proto/README.md §3, "Message counts")

    def add(self, batch: pb.ReplyBatch) -> None:
        self.messages += sum(entry.count for entry in batch.messages)
        for reply in batch.replies:
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
        with RootClient(endpoint, root_pki()) as client:
            topo = client.topology()  # also fails fast when the root is down
            hypervisors = topo.hypervisors_present or topo.hypervisors  # an older root sends no present count
            expected = hypervisors if ids is None else len(ids)
            started = time.monotonic()
            batches = client.dispatch(operation, ids[0] if ids and len(ids) == 1 else ids, arguments, timeout)
            if as_json:
                for batch in batches:
                    for reply in batch.replies:
                        _print_json(_reply_json(reply))
                    tally.add(batch)
            else:
                _stream_with_progress(batches, expected, tally)
            elapsed = time.monotonic() - started
    if not as_json:
        _print_summary(tally, expected, elapsed)
    if tally.failures or tally.received < expected:
        raise typer.Exit(EXIT_FAILED)


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
            tally.add(batch)
            progress.update(task, completed=tally.received)


def _print_summary(tally: _Tally, expected: int, elapsed: float) -> None:
    table = Table("status", "replies", "share")
    for name, n in tally.by_status.most_common():
        table.add_row(_styled(name), str(n), f"{100 * n / max(tally.received, 1):.1f}%")
    out.print(table)
    out.print(f"{tally.received}/{expected} replies in {elapsed:.2f} s, {tally.messages} tree messages")
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
    with _reported_errors(endpoint), RootClient(endpoint, root_pki()) as client:
        reply = client.health()
        # A root older than the hosts' membership (proto/README.md §9) sends no present count.
        total = reply.hypervisors_present or client.topology().hypervisors
    if as_json:
        _print_json(reply)
    else:
        _print_health(reply, total)
    if reply.hypervisors_ok < total:
        raise typer.Exit(EXIT_FAILED)


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
        # The root's range covers the whole tree, as a relay's would: name it, so that no one kills it
        # for a relay (issue 16; killing the root ends the cloud).
        peers.add_row("root" if role == "root" else _node(peer.node), role, _peer_state(peer.state), str(peer.pid), peer.host, *netns,
                      f"{peer.rss_kib / 1024:.1f}", str(peer.respawns), heard)
    out.print(peers)
    events = Table("time", "node", "state", "reason", title=f"last {SHOWN_EVENTS} events")
    for event in list(reply.events)[-SHOWN_EVENTS:]:
        at = time.strftime("%H:%M:%S", time.localtime(event.at_ms / 1000)) + f".{event.at_ms % 1000:03d}"
        node = "root" if reply.peers and event.node == reply.peers[0].node else _node(event.node)
        events.add_row(at, node, _peer_state(event.state), event.reason)
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
    with _reported_errors(endpoint), RootClient(endpoint, root_pki()) as client:
        reply = client.topology()
    if as_json:
        _print_json(reply)
    else:
        out.print(topology_grid(reply))
