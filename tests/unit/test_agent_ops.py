"""Agent operations (agents/ops.py) on real simulated hypervisors (agents/hypervisor.py).

Each simulated hypervisor is a libvirt test:///<file> connection of its own; no MPI.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest

from cloudland import operations
from cloudland.errors import DriverError, HypervisorError, InvalidRequest, WireError
from cloudland_agents import ops
from cloudland_agents.hypervisor import Hypervisor, open_simulated, simulated_node_xml
from cloudland_launcher import wire
from cloudland_proto.v1 import diag_pb2 as diag
from tests.unit.agentcall import call

DOMAIN_XML = "<domain type='test'><name>{name}</name><memory>1024</memory><os><type>hvm</type></os></domain>"
TEST_ONLY = {"test.count", "test.slow", "test.fail", "test.send_raw", "test.break_report", "test.seed_domains"}


@pytest.fixture
def open_hv(tmp_path: Path) -> Iterator[Callable[[int], Hypervisor]]:
    """Open simulated hypervisors under one state dir; all are closed after the test."""
    opened: list[Hypervisor] = []

    def open_one(hypervisor_id: int) -> Hypervisor:
        hv = open_simulated(hypervisor_id, tmp_path)
        opened.append(hv)
        return hv

    yield open_one
    for hv in opened:
        hv.close()


def context(hv: Hypervisor, job_id: str = "job-1", remaining: float | None = None) -> tuple[ops.Context, list[bytes]]:
    sent: list[bytes] = []
    deadline = 0.0 if remaining is None else time.monotonic() + remaining
    return ops.Context(hv, job_id, deadline, sent.append), sent


def run(name: str, ctx: ops.Context, **fields: Any) -> dict[str, Any]:
    """Run ``name`` with its request message made of ``fields``; its result as a dict."""
    return call(ctx, name, operations.types_of(name).request(**fields))


# -- simulated hypervisors ----------------------------------------------------------


def expected_size(hypervisor_id: int) -> tuple[int, int]:
    """(cpus, memory KiB) read back from the host file's <node> element."""
    node = ET.fromstring(simulated_node_xml(hypervisor_id))
    cpus = 1
    for tag in ("nodes", "sockets", "cores", "threads"):
        cpus *= int(node.findtext(f"cpu/{tag}"))
    assert node.find("memory").get("unit") == "KiB"
    return cpus, int(node.findtext("memory"))


@pytest.mark.parametrize(
    ("hypervisor_id", "cpus", "memory_gib"),
    [(0, 16, 64), (5, 32, 128), (15, 64, 256), (16, 16, 64)],
)
def test_report_matches_node_xml(open_hv: Callable[[int], Hypervisor], hypervisor_id: int, cpus: int, memory_gib: int) -> None:
    assert expected_size(hypervisor_id) == (cpus, memory_gib << 20)
    report = open_hv(hypervisor_id).report()
    assert report.hypervisor == hypervisor_id
    assert report.hostname == f"sim-{hypervisor_id:05d}"
    assert (report.cpus, report.memory_kib) == (cpus, memory_gib << 20)
    # The test driver has no NUMA cells for a file-defined host, so free memory reads 0.
    assert report.free_memory_kib <= report.memory_kib
    assert (report.domains, report.running_domains) == (0, 0)


def test_simulated_hypervisors_are_independent(open_hv: Callable[[int], Hypervisor], tmp_path: Path) -> None:
    a, b, a_again = open_hv(0), open_hv(5), open_hv(0)
    assert sorted(p.name for p in (tmp_path / "hosts").iterdir()) == ["hv-0.xml", "hv-5.xml"]
    assert a.report().cpus != b.report().cpus

    a.conn.defineXML(DOMAIN_XML.format(name="vm-a"))
    assert a.inventory()["domains"] == ["vm-a"]
    assert b.inventory()["domains"] == []
    assert a_again.inventory()["domains"] == []  # a file-defined test host shares no state
    assert a.report().domains == 1
    assert b.report().domains == 0


def test_open_simulated_keeps_an_existing_host_file(open_hv: Callable[[int], Hypervisor], tmp_path: Path) -> None:
    open_hv(3).close()
    host = tmp_path / "hosts" / "hv-3.xml"
    host.write_text(simulated_node_xml(7))  # a different size, written by "someone else"
    assert open_hv(3).report().cpus == expected_size(7)[0]


def test_unopenable_uri_is_a_driver_error_naming_the_hypervisor(tmp_path: Path) -> None:
    with pytest.raises(DriverError, match="hypervisor 7") as caught:
        Hypervisor(7, f"test://{tmp_path}/missing.xml", "nowhere")
    assert caught.value.hypervisor == 7


# -- the registry -------------------------------------------------------------------


def test_lookup_hides_test_only_operations() -> None:
    assert {name for name, op in ops.REGISTRY.items() if op.test_only} == TEST_ONLY
    for name, op in ops.REGISTRY.items():
        assert ops.lookup(name, test_ops=True) is op
        assert ops.lookup(name, test_ops=False) is (None if op.test_only else op)
    assert ops.lookup("no.such.op", test_ops=True) is None
    assert ops.lookup("no.such.op", test_ops=False) is None


@pytest.mark.parametrize(
    ("name", "inline"),
    [("ping", True), ("inventory", True), ("sleep", False), ("test.count", True), ("test.slow", False),
     ("test.fail", True), ("test.send_raw", True), ("test.break_report", True)],
)
def test_inline_flags(name: str, inline: bool) -> None:
    """Inline operations run on the MPI thread, so only quick ones may be inline."""
    assert ops.REGISTRY[name].inline is inline


@pytest.fixture
def scratch_name() -> Iterator[str]:
    """A name with messages (cloudland.operations) and no handler yet."""
    name = f"test.scratch.{uuid.uuid4().hex}"
    operations.OPERATIONS[name] = operations.Types(diag.PingRequest, diag.PingResult)
    yield name
    ops.REGISTRY.pop(name, None)
    del operations.OPERATIONS[name]


def first(ctx: ops.Context, request: diag.PingRequest) -> None:
    return None


def second(ctx: ops.Context, request: diag.PingRequest) -> None:
    return None


def test_an_operation_without_messages_is_refused() -> None:
    """The registry of messages (cloudland/operations.py) comes first: no handler without a contract."""
    name = f"test.nameless.{uuid.uuid4().hex}"
    with pytest.raises(ValueError, match="no messages"):
        ops.operation(name)(first)
    assert name not in ops.REGISTRY


def test_duplicate_registration_is_refused(scratch_name: str) -> None:

    assert ops.operation(scratch_name, inline=True)(first) is first
    with pytest.raises(ValueError, match=scratch_name):
        ops.operation(scratch_name)(second)
    assert ops.REGISTRY[scratch_name].run is first

    ping = ops.REGISTRY["ping"]
    with pytest.raises(ValueError, match="ping"):
        ops.operation("ping")(second)
    assert ops.REGISTRY["ping"] is ping


# -- built-in operations ------------------------------------------------------------


def test_ping(open_hv: Callable[[int], Hypervisor]) -> None:
    ctx, sent = context(open_hv(0))
    assert run("ping", ctx) == {}
    assert sent == []


def test_seed_domains_defines_running_cloudland_domains_once(open_hv: Callable[[int], Hypervisor]) -> None:
    """``test.seed_domains`` (benchmarks): ``per_hypervisor`` running domains for instances
    ``id * per + 1`` onwards, each carrying its instance id in CloudLand's metadata, which the
    report reads; a retry defines none twice."""
    hv = open_hv(3)
    for _ in range(2):
        ctx, _sent = context(hv)
        assert run("test.seed_domains", ctx, per_hypervisor=4) == {}
    report = hv.report()
    assert sorted((vm.uuid, vm.state, vm.instance_id) for vm in report.vms) == [
        (ops.seeded_uuid(i), "running", i) for i in range(13, 17)]
    with pytest.raises(InvalidRequest, match="per_hypervisor"):
        run("test.seed_domains", context(hv)[0], per_hypervisor=10_001)


def test_inventory(open_hv: Callable[[int], Hypervisor]) -> None:
    hv = open_hv(5)
    hv.conn.defineXML(DOMAIN_XML.format(name="vm-1"))
    ctx, _ = context(hv)
    payload = run("inventory", ctx)
    assert payload["hostname"] == "sim-00005"
    assert (payload["cpus"], payload["memory_kib"]) == expected_size(5)
    assert payload["domains"] == ["vm-1"]
    assert set(payload) == {"hostname", "cpus", "memory_kib", "free_memory_kib", "domains"}


@pytest.mark.parametrize("seconds", [-1, 4000, float("nan")])
@pytest.mark.parametrize("name", ["sleep", "test.slow"])
def test_sleep_rejects_bad_seconds(open_hv: Callable[[int], Hypervisor], name: str, seconds: float) -> None:
    ctx, _ = context(open_hv(0))
    with pytest.raises(InvalidRequest, match="seconds"):
        run(name, ctx, seconds=seconds)


@pytest.mark.parametrize("seconds", ["x", [1]])
def test_a_seconds_of_another_type_cannot_even_be_sent(seconds: object) -> None:
    """What the Struct once let through and the operation had to refuse, the message refuses."""
    with pytest.raises(TypeError):
        diag.SleepRequest(seconds=seconds)  # type: ignore[arg-type]


@pytest.mark.parametrize("seconds", [0, 0.0, 0.05])
def test_sleep_accepts(open_hv: Callable[[int], Hypervisor], seconds: float) -> None:
    ctx, _ = context(open_hv(0))
    started = time.monotonic()
    assert run("sleep", ctx, seconds=seconds) == {"slept": float(seconds)}
    assert time.monotonic() - started >= seconds


def test_sleep_stops_at_the_deadline(open_hv: Callable[[int], Hypervisor]) -> None:
    ctx, _ = context(open_hv(0), remaining=0.1)
    started = time.monotonic()
    payload = run("sleep", ctx, seconds=5)
    elapsed = time.monotonic() - started
    assert elapsed < 0.5
    assert 0 < payload["slept"] <= 0.1


def test_sleep_past_the_deadline_returns_at_once(open_hv: Callable[[int], Hypervisor]) -> None:
    hv = open_hv(0)
    ctx = ops.Context(hv, "job-late", time.monotonic() - 1, lambda _: None)
    assert run("sleep", ctx, seconds=5) == {"slept": 0.0}


def test_count_is_per_hypervisor_and_key(open_hv: Callable[[int], Hypervisor]) -> None:
    key, other = f"k-{uuid.uuid4().hex}", f"k-{uuid.uuid4().hex}"  # _counts lives for the process
    a, _ = context(open_hv(0))
    b, _ = context(open_hv(1))
    assert [run("test.count", a, key=key)["count"] for _ in range(3)] == [1, 2, 3]
    assert run("test.count", b, key=key) == {"count": 1}
    assert run("test.count", a, key=other) == {"count": 1}
    assert run("test.count", a, key=key) == {"count": 4}


def test_slow_sleeps_only_on_listed_hypervisors(open_hv: Callable[[int], Hypervisor]) -> None:
    slow, _ = context(open_hv(2))
    fast, _ = context(open_hv(3))
    assert run("test.slow", fast, seconds=5, slow=[2]) == {"slept": 0}
    started = time.monotonic()
    run("test.slow", slow, seconds=0.05, slow=[2])
    assert time.monotonic() - started >= 0.05


def test_fail_names_hypervisor_and_job(open_hv: Callable[[int], Hypervisor]) -> None:
    ctx, _ = context(open_hv(3), job_id="job-7")
    with pytest.raises(HypervisorError) as caught:
        run("test.fail", ctx, message="disk on fire")
    message = str(caught.value)
    assert "disk on fire" in message
    assert "hypervisor 3" in message
    assert "job-7" in message
    assert (caught.value.hypervisor, caught.value.job_id) == (3, "job-7")


def test_break_report_makes_the_report_raise(open_hv: Callable[[int], Hypervisor]) -> None:
    hv = open_hv(4)
    ctx, _ = context(hv)
    assert run("test.break_report", ctx) == {}
    with pytest.raises(RuntimeError, match="report of hypervisor 4 broken"):
        hv.report()


def test_send_raw_garbage_is_refused_by_the_wire(open_hv: Callable[[int], Hypervisor]) -> None:
    ctx, sent = context(open_hv(0))
    assert run("test.send_raw", ctx, kind="garbage") == {"sent": "garbage"}
    [data] = sent
    with pytest.raises(WireError, match="leaf 0"):
        wire.decode(data, "leaf 0")


def test_send_raw_command_is_a_valid_upward_command(open_hv: Callable[[int], Hypervisor]) -> None:
    ctx, sent = context(open_hv(0))
    run("test.send_raw", ctx, kind="command")
    [data] = sent
    assert wire.decode(data, "leaf 0").WhichOneof("body") == "command"
    with pytest.raises(InvalidRequest, match="kind"):
        run("test.send_raw", ctx, kind="other")
