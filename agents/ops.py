"""The operation registry: what an agent can be asked to do.

An operation is a function ``run(ctx, request) -> result`` registered under a name that
cloudland/operations.py knows: the leaf unpacks the command's request into that name's
request message (a wrong type is INVALID_ARGUMENT before any work), and packs the result
message (None, or an empty message, is an OK without result). Inline operations are quick
and never block, so they run on the MPI thread; the rest run on the agent's worker threads
(``batched``: a command's targets on one leaf one after another, on one). What one command's
targets share is done once per leaf: ``check`` validates the request, and ``compact`` lets a
result the request already says travel as a bare OK; ``reports=False`` spares the hypervisor's
report after an operation that changes none of it.
The domains register theirs in agents/compute/, agents/images/ and agents/network/. Contract of every
operation (proto/v1/*.proto): raise InvalidRequest for a request out of range, HypervisorError
when the work fails; be idempotent on ``ctx.job_id`` if destructive.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from google.protobuf.message import Message

from cloudland import operations
from cloudland.errors import InvalidRequest
from cloudland_proto.v1 import diag_pb2 as diag

if TYPE_CHECKING:
    from cloudland_agents.hypervisor import Hypervisor

Handler = Callable[["Context", Any], Message | None]


@dataclass
class Context:
    """What an operation may use: its hypervisor, job, deadline and a way to talk up."""

    hypervisor: Hypervisor
    job_id: str
    deadline: float  # time.monotonic() value; 0 = none
    send_raw: Callable[[bytes], None]
    # The leaf ran the operation's ``check`` on this request already, once for all the targets of
    # its command: the operation need not check again what ``check`` covers.
    checked: bool = False

    def remaining(self) -> float:
        return float("inf") if not self.deadline else max(0.0, self.deadline - time.monotonic())


@dataclass(frozen=True)
class Operation:
    name: str
    run: Handler
    inline: bool
    test_only: bool
    # Its targets on one leaf run one after another on one worker thread, not one thread each:
    # a cheap operation sent to many simulated hypervisors at once (net.apply to a VPC of a
    # thousand), where a thread wake-up per hypervisor costs more than the work.
    batched: bool = False
    # What of the request is the same for every target, checked once per command at the leaf
    # (InvalidRequest: INVALID_ARGUMENT for every target), not once per hypervisor: a VPC's delta
    # carries its security groups' member addresses, a thousand of them on a VPC of a thousand.
    check: Callable[[Any], None] | None = None
    # Whether its end may change the hypervisor's report (VMs, memory, disks): then the leaf
    # reports the hypervisor at once (§6.1). The network's operations change none of it.
    reports: bool = True
    # ``compact(request, result)``: True when the result says nothing the request does not (an
    # apply that left the hypervisor at the delta's generation): it travels as an OK without
    # result, one hypervisor id in a packed list (proto/README.md §3), not a Reply of its own.
    compact: Callable[[Any, Any], bool] | None = None


REGISTRY: dict[str, Operation] = {}


def operation(name: str, *, inline: bool = False, test_only: bool = False, batched: bool = False,
              check: Callable[[Any], None] | None = None, reports: bool = True,
              compact: Callable[[Any, Any], bool] | None = None) -> Callable[..., Any]:
    """Register ``run`` as the operation ``name``."""

    def register(run: Handler) -> Handler:
        if name not in operations.OPERATIONS:  # its messages come first (cloudland/operations.py)
            raise ValueError(f"operation {name!r} has no messages in cloudland.operations")
        if name in REGISTRY:
            raise ValueError(f"operation {name!r} registered twice")
        REGISTRY[name] = Operation(name, run, inline, test_only, batched, check, reports, compact)
        return run

    return register


def lookup(name: str, test_ops: bool) -> Operation | None:
    op = REGISTRY.get(name)
    return None if op is None or (op.test_only and not test_ops) else op


def in_range(value: float, key: str, low: float, high: float) -> float:
    """``value`` if within [low, high], or InvalidRequest naming the field."""
    if not low <= value <= high:
        raise InvalidRequest(f"{key} must be in [{low:g}, {high:g}], got {value:g}")
    return value


# -- built-in operations (proto/v1/diag.proto) ---------------------------------------------


@operation("ping", inline=True)
def ping(ctx: Context, request: diag.PingRequest) -> None:
    """Liveness: the status OK is the answer; nothing else to carry."""
    return None


@operation("inventory", inline=True)
def inventory(ctx: Context, request: diag.InventoryRequest) -> diag.InventoryResult:
    """Resources and domains of the hypervisor, read from libvirt now."""
    return diag.InventoryResult(**ctx.hypervisor.inventory())


@operation("sleep")
def sleep(ctx: Context, request: diag.SleepRequest) -> diag.SleepResult:
    """Sleep ``seconds`` (at most until the deadline): a slow operation for tests."""
    seconds = in_range(request.seconds if request.HasField("seconds") else 1.0, "seconds", 0.0, 3600.0)
    slept = min(seconds, ctx.remaining())
    time.sleep(slept)
    return diag.SleepResult(slept=slept)


_counts: dict[tuple[int, str], int] = {}


@operation("test.count", inline=True, test_only=True)
def count(ctx: Context, request: diag.TestCountRequest) -> diag.TestCountResult:
    """Count executions per (hypervisor, key): proves a command ran exactly once where sent."""
    key = (ctx.hypervisor.id, request.key)
    _counts[key] = _counts.get(key, 0) + 1
    return diag.TestCountResult(count=_counts[key])


@operation("test.slow", test_only=True)
def slow(ctx: Context, request: diag.TestSlowRequest) -> diag.TestSlowResult:
    """Sleep ``seconds`` on the hypervisors listed in ``slow`` (deadline or not); the others answer at once."""
    seconds = in_range(request.seconds if request.HasField("seconds") else 1.0, "seconds", 0.0, 60.0)
    if ctx.hypervisor.id in set(request.slow):
        time.sleep(seconds)
        return diag.TestSlowResult(slept=seconds)
    return diag.TestSlowResult(slept=0)


@operation("test.fail", inline=True, test_only=True)
def fail(ctx: Context, request: diag.TestFailRequest) -> None:
    """Fail with the given message: exercises the FAILED path end to end."""
    from cloudland.errors import HypervisorError

    raise HypervisorError(ctx.hypervisor.id, request.message or "requested failure", ctx.job_id)


@operation("test.break_report", inline=True, test_only=True)
def break_report(ctx: Context, request: diag.TestBreakReportRequest) -> None:
    """Make the hypervisor's resource report raise from now on: the rank's next heartbeat
    fails on its MPI thread, a crash the rank must log and die of visibly."""

    def broken() -> None:
        raise RuntimeError(f"report of hypervisor {ctx.hypervisor.id} broken by test.break_report")

    ctx.hypervisor.report = broken  # type: ignore[method-assign,assignment]
    return None


@operation("test.send_raw", inline=True, test_only=True)
def send_raw(ctx: Context, request: diag.TestSendRawRequest) -> diag.TestSendRawResult:
    """Send a message that is not a reply up to the parent, which must refuse it.

    ``kind`` "garbage": bytes that are no protobuf envelope; "command": a valid
    envelope carrying a Command, which must never travel or run upward.
    """
    from cloudland_launcher import wire
    from cloudland_proto.v1 import envelope_pb2 as pb

    kind = request.kind or "garbage"
    if kind == "garbage":
        ctx.send_raw(b"\xff\xfeTHIS IS NOT PROTOBUF" + bytes(range(256)))
    elif kind == "command":
        bad = pb.Command(job_id="upward", operation="test.count", targets=pb.Targets(all=True),
                         request=operations.pack("test.count", diag.TestCountRequest(key="upward")))
        ctx.send_raw(wire.encode(command=bad))
    else:
        raise InvalidRequest(f"kind must be 'garbage' or 'command', got {kind!r}")
    return diag.TestSendRawResult(sent=kind)


def seeded_uuid(instance_id: int) -> str:
    """The uuid ``test.seed_domains`` gives instance ``instance_id``'s domain (benchmarks seed the
    database's rows with the same)."""
    return f"00000000-0000-4000-8000-{instance_id:012x}"


@operation("test.seed_domains", test_only=True)
def seed_domains(ctx: Context, request: diag.TestSeedDomainsRequest) -> None:
    """Define and start ``per_hypervisor`` domains carrying CloudLand's metadata, for instances
    ``hypervisor * per_hypervisor + 1`` onwards: benchmarks fill thousands of hypervisors at once
    without a job per VM."""
    from cloudland_agents.compute.domain import DomainSpec, domain_xml

    per = int(in_range(request.per_hypervisor, "per_hypervisor", 0, 10_000))
    first = ctx.hypervisor.id * per + 1
    have = {d.UUIDString() for d in ctx.hypervisor.conn.listAllDomains()}  # idempotent: retried on UNAVAILABLE
    for instance_id in range(first, first + per):
        uuid = seeded_uuid(instance_id)
        if uuid in have:
            continue
        spec = DomainSpec(name=f"cl-{uuid}", uuid=uuid, vcpus=1, memory_mib=64,
                          metadata={"instance_id": str(instance_id)})
        ctx.hypervisor.conn.defineXML(domain_xml(spec)).create()
    return None  # OK without a result: the compact form, at 10,000 hypervisors
