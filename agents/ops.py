"""The operation registry: what an agent can be asked to do.

An operation is a function ``run(ctx, args) -> payload`` registered under a
name. Inline operations are quick and never block, so they run on the MPI
thread; the rest run on the agent's worker threads. Later issues register
more (compute, network, storage). Contract of every operation: validate
``args`` and raise InvalidRequest for bad ones; raise HypervisorError when the
work fails; be idempotent on ``ctx.job_id`` if destructive.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cloudland.errors import InvalidRequest

if TYPE_CHECKING:
    from cloudland_agents.hypervisor import Hypervisor

Payload = dict[str, Any]


@dataclass
class Context:
    """What an operation may use: its hypervisor, job, deadline and a way to talk up."""

    hypervisor: Hypervisor
    job_id: str
    deadline: float  # time.monotonic() value; 0 = none
    send_raw: Callable[[bytes], None]

    def remaining(self) -> float:
        return float("inf") if not self.deadline else max(0.0, self.deadline - time.monotonic())


@dataclass(frozen=True)
class Operation:
    name: str
    run: Callable[[Context, Payload], Payload]
    inline: bool
    test_only: bool


REGISTRY: dict[str, Operation] = {}


def operation(name: str, *, inline: bool = False, test_only: bool = False) -> Callable[..., Any]:
    """Register ``run`` as the operation ``name``."""

    def register(run: Callable[[Context, Payload], Payload]) -> Callable[[Context, Payload], Payload]:
        if name in REGISTRY:
            raise ValueError(f"operation {name!r} registered twice")
        REGISTRY[name] = Operation(name, run, inline, test_only)
        return run

    return register


def lookup(name: str, test_ops: bool) -> Operation | None:
    op = REGISTRY.get(name)
    return None if op is None or (op.test_only and not test_ops) else op


def number(args: Payload, key: str, default: float, low: float, high: float) -> float:
    """A numeric argument within [low, high], or InvalidRequest naming it."""
    value = args.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise InvalidRequest(f"argument {key!r} must be a number in [{low:g}, {high:g}], got {value!r}")
    return float(value)


# -- built-in operations -------------------------------------------------------


@operation("ping", inline=True)
def ping(ctx: Context, args: Payload) -> Payload:
    """Liveness: the status OK is the answer; nothing else to carry."""
    return {}


@operation("inventory", inline=True)
def inventory(ctx: Context, args: Payload) -> Payload:
    """Resources and domains of the hypervisor, read from libvirt now."""
    return ctx.hypervisor.inventory()


@operation("sleep")
def sleep(ctx: Context, args: Payload) -> Payload:
    """Sleep ``seconds`` (at most until the deadline): a slow operation for tests."""
    seconds = number(args, "seconds", 1.0, 0.0, 3600.0)
    slept = min(seconds, ctx.remaining())
    time.sleep(slept)
    return {"slept": slept}


_counts: dict[tuple[int, str], int] = {}


@operation("test.count", inline=True, test_only=True)
def count(ctx: Context, args: Payload) -> Payload:
    """Count executions per (hypervisor, key): proves a command ran exactly once where sent."""
    key = (ctx.hypervisor.id, str(args.get("key", "")))
    _counts[key] = _counts.get(key, 0) + 1
    return {"count": _counts[key]}


@operation("test.slow", test_only=True)
def slow(ctx: Context, args: Payload) -> Payload:
    """Sleep ``seconds`` on the hypervisors listed in ``slow`` (deadline or not); the others answer at once."""
    seconds = number(args, "seconds", 1.0, 0.0, 60.0)
    if ctx.hypervisor.id in {int(x) for x in args.get("slow", [])}:
        time.sleep(seconds)
        return {"slept": seconds}
    return {"slept": 0}


@operation("test.fail", inline=True, test_only=True)
def fail(ctx: Context, args: Payload) -> Payload:
    """Fail with the given message: exercises the FAILED path end to end."""
    from cloudland.errors import HypervisorError

    raise HypervisorError(ctx.hypervisor.id, str(args.get("message", "requested failure")), ctx.job_id)


@operation("test.break_report", inline=True, test_only=True)
def break_report(ctx: Context, args: Payload) -> Payload:
    """Make the hypervisor's resource report raise from now on: the rank's next heartbeat
    fails on its MPI thread, a crash the rank must log and die of visibly."""

    def broken() -> None:
        raise RuntimeError(f"report of hypervisor {ctx.hypervisor.id} broken by test.break_report")

    ctx.hypervisor.report = broken  # type: ignore[method-assign,assignment]
    return {}


@operation("test.send_raw", inline=True, test_only=True)
def send_raw(ctx: Context, args: Payload) -> Payload:
    """Send a message that is not a reply up to the parent, which must refuse it.

    ``kind`` "garbage": bytes that are no protobuf envelope; "command": a valid
    envelope carrying a Command, which must never travel or run upward.
    """
    from cloudland_launcher import wire
    from cloudland_proto.v1 import envelope_pb2 as pb

    kind = args.get("kind", "garbage")
    if kind == "garbage":
        ctx.send_raw(b"\xff\xfeTHIS IS NOT PROTOBUF" + bytes(range(256)))
    elif kind == "command":
        bad = pb.Command(job_id="upward", operation="test.count", targets=pb.Targets(all=True))
        bad.args.update({"key": "upward"})
        ctx.send_raw(wire.encode(command=bad))
    else:
        raise InvalidRequest(f"argument 'kind' must be 'garbage' or 'command', got {kind!r}")
    return {"sent": kind}


def seeded_uuid(instance_id: int) -> str:
    """The uuid ``test.seed_domains`` gives instance ``instance_id``'s domain (benchmarks seed the
    database's rows with the same)."""
    return f"00000000-0000-4000-8000-{instance_id:012x}"


@operation("test.seed_domains", test_only=True)
def seed_domains(ctx: Context, args: Payload) -> Payload:
    """Define and start ``per_hypervisor`` domains carrying CloudLand's metadata, for instances
    ``hypervisor * per_hypervisor + 1`` onwards: benchmarks fill thousands of hypervisors at once
    without a job per VM."""
    from cloudland_agents.domain import DomainSpec, domain_xml

    per = int(number(args, "per_hypervisor", 0, 0, 10_000))
    first = ctx.hypervisor.id * per + 1
    have = {d.UUIDString() for d in ctx.hypervisor.conn.listAllDomains()}  # idempotent: retried on UNAVAILABLE
    for instance_id in range(first, first + per):
        uuid = seeded_uuid(instance_id)
        if uuid in have:
            continue
        spec = DomainSpec(name=f"cl-{uuid}", uuid=uuid, vcpus=1, memory_mib=64,
                          metadata={"instance_id": str(instance_id)})
        ctx.hypervisor.conn.defineXML(domain_xml(spec)).create()
    return {}  # OK without payload: the compact form, at 10,000 hypervisors
