"""The cloudland CLI: the target-spec parser, exit codes and output, against a fake root.

The fake root is a real gRPC server on a loopback port serving canned replies, so the
CLI runs its real client; no MPI is involved.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from typer.testing import CliRunner

from cloudland import operations, pki
from cloudland.errors import InvalidRequest
from cloudland_cli import main, start, tree
from cloudland_proto.v1 import diag_pb2 as diag
from cloudland_proto.v1 import envelope_pb2 as pb
from cloudland_proto.v1 import root_pb2, root_pb2_grpc

HYPERVISORS = 12
FAILING = 5  # the fake root answers FAILED for this hypervisor


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, None),
        ("", None),
        ("  ", None),
        ("3", [3]),
        ("0", [0]),
        ("1,2,5-9", [1, 2, 5, 6, 7, 8, 9]),
        (" 9 , 1 - 3 ", [1, 2, 3, 9]),
        ("4,4,3-5", [3, 4, 5]),
        ("7-7", [7]),
        ("0-999999", list(range(1_000_000))),
        ("4294967295", [2**32 - 1]),
    ],
)
def test_parse_targets_accepts(spec: str | None, expected: list[int] | None) -> None:
    assert tree.parse_targets(spec) == expected


@pytest.mark.parametrize(
    ("spec", "quoted", "reason"),
    [
        ("-3", "'-3'", "negative"),
        ("1,-2-4", "'-2-4'", "negative"),
        ("9-5", "'9-5'", "reversed"),
        ("abc", "'abc'", "bad target"),
        ("1,,2", "''", "bad target"),
        ("1-", "'1-'", "bad target"),
        ("1.5", "'1.5'", "bad target"),
        ("3-x", "'3-x'", "bad target"),
        ("0-1000000", "'0-1000000'", "more than 1000000"),
        ("4294967296", "'4294967296'", "beyond"),
        ("0-599999,600000-1000000", "'0-599999,600000-1000000'", "more than 1000000"),
    ],
)
def test_parse_targets_rejects(spec: str, quoted: str, reason: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        tree.parse_targets(spec)
    assert quoted in str(caught.value)
    assert reason in str(caught.value)


class FakeRoot(root_pb2_grpc.RootServicer):
    """Answers OK for every target but FAILING; records the commands it was sent."""

    def __init__(self) -> None:
        self.commands: list[pb.Command] = []

    def Dispatch(self, request: root_pb2.DispatchRequest, context: Any) -> Iterator[pb.ReplyBatch]:
        command = request.command
        self.commands.append(command)
        kind = command.targets.WhichOneof("kind")
        ids = {"all": range(HYPERVISORS), "hypervisor": [command.targets.hypervisor]}.get(
            kind, command.targets.set.ids
        )
        batch = pb.ReplyBatch()
        for hypervisor in ids:
            reply = batch.replies.add(job_id=command.job_id, hypervisor=hypervisor, status=pb.OK)
            reply.result.CopyFrom(operations.pack_result(
                "inventory", diag.InventoryResult(hostname=command.operation, cpus=hypervisor)))
            if hypervisor == FAILING:
                reply.status, reply.error = pb.FAILED, f"boom (hypervisor {hypervisor})"
        yield batch

    def Topology(self, request: root_pb2.TopologyRequest, context: Any) -> root_pb2.TopologyReply:
        return root_pb2.TopologyReply(
            hypervisors=HYPERVISORS, per_leaf=4, fanout=2, leaves=3, relays=1, depth=2, ready=True
        )

    def Health(self, request: root_pb2.HealthRequest, context: Any) -> root_pb2.HealthReply:
        now_ms = int(time.time() * 1000)
        relay = pb.PeerStatus(node=pb.NodeId(first_leaf=0, end_leaf=2), relay=True, state=pb.PEER_OK)
        leaf = pb.PeerStatus(node=pb.NodeId(first_leaf=2, end_leaf=3), state=pb.PEER_SLOW, pid=42,
                             host="h1", last_heard_ms=now_ms - 3000, rss_kib=20480, respawns=1)
        event = pb.PeerEvent(node=leaf.node, state=pb.PEER_SLOW, reason="3 heartbeats missed", at_ms=now_ms)
        # The root lists itself first (proto/README.md §8), its range the whole tree's, as a relay's would be.
        root = pb.PeerStatus(node=pb.NodeId(first_leaf=0, end_leaf=3), relay=True, state=pb.PEER_OK, pid=7)
        return root_pb2.HealthReply(peers=[root, leaf, relay], events=[event], hypervisors_ok=8, rejected=2)


@pytest.fixture(scope="module")
def fake_root() -> Iterator[tuple[str, FakeRoot]]:
    servicer = FakeRoot()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    root_pb2_grpc.add_RootServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", pki.grpc_server_credentials(pki.default_dir()))
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(grace=None)


def run(*args: str) -> Any:
    return CliRunner().invoke(main.app, list(args))


def test_help_lists_the_tree_commands() -> None:
    assert "tree" in run("--help").stdout
    result = run("tree", "--help")
    assert result.exit_code == 0
    for command in ("up", "ping", "broadcast", "health", "topology"):
        assert command in result.stdout


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--args", "{not json"], "cloudland: --args is not valid JSON"),
        (["--args", "[1, 2]"], "cloudland: --args must be a JSON object"),
        (["--args", '{"n": 1}'], 'cloudland: --args is not a cloudland.v1.PingRequest: Message type "cloudland.v1.PingRequest" '
                                 'has no field named "n"'),
        (["--targets", "9-5"], "cloudland: reversed range '9-5'"),
    ],
)
def test_bad_input_exits_2_before_contacting_the_root(flags: list[str], message: str) -> None:
    result = run("tree", "--endpoint", "127.0.0.1:1", "broadcast", "ping", *flags)
    assert result.exit_code == 2
    assert result.stderr.startswith(message)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output


@pytest.mark.parametrize("command", [["health"], ["topology"], ["broadcast", "ping"], ["ping", "3"]])
def test_unreachable_root_exits_3_with_one_line(command: list[str]) -> None:
    start = time.monotonic()
    result = run("tree", "--endpoint", "127.0.0.1:1", *command)
    assert time.monotonic() - start < 5
    assert result.exit_code == 3
    assert result.stderr.startswith("cloudland: cannot reach the root at 127.0.0.1:1: ")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output


def test_broadcast_summarises_and_exits_1_when_a_reply_failed(fake_root: tuple[str, FakeRoot]) -> None:
    endpoint, servicer = fake_root
    result = run("tree", "--endpoint", endpoint, "broadcast", "sleep", "--args", '{"seconds": 1}')
    assert result.exit_code == 1
    command = servicer.commands[-1]
    assert command.targets.all and operations.request_of(command) == diag.SleepRequest(seconds=1)
    assert f"{HYPERVISORS}/{HYPERVISORS} replies" in result.stdout
    assert f"hypervisor {FAILING}: FAILED: boom" in result.stdout


def test_broadcast_to_targets_exits_0_when_all_ok(fake_root: tuple[str, FakeRoot]) -> None:
    endpoint, servicer = fake_root
    result = run("tree", "--endpoint", endpoint, "broadcast", "ping", "--targets", "1-3,8")
    assert result.exit_code == 0, result.output
    assert list(servicer.commands[-1].targets.set.ids) == [1, 2, 3, 8]
    assert "4/4 replies" in result.stdout


def test_broadcast_json_prints_one_object_per_reply(fake_root: tuple[str, FakeRoot]) -> None:
    endpoint, servicer = fake_root
    result = run("tree", "--endpoint", endpoint, "broadcast", "ping", "--targets", "5", "--json")
    assert result.exit_code == 1
    assert servicer.commands[-1].targets.WhichOneof("kind") == "hypervisor"
    [line] = result.stdout.splitlines()
    assert json.loads(line) == {
        "hypervisor": 5,
        "status": "FAILED",
        "result": {"hostname": "ping", "cpus": 5, "memory_kib": 0, "free_memory_kib": 0, "domains": []},
        "error": "boom (hypervisor 5)",
    }


def test_ping_prints_each_round_trip_and_statistics(fake_root: tuple[str, FakeRoot]) -> None:
    endpoint, _ = fake_root
    result = run("tree", "--endpoint", endpoint, "ping", "7", "--count", "3")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("hypervisor 7  OK") == 3
    assert "3/3 OK, round trip min/median/max" in result.stdout


def test_health_shows_peers_events_and_counters(fake_root: tuple[str, FakeRoot]) -> None:
    endpoint, _ = fake_root
    result = run("tree", "--endpoint", endpoint, "health")
    assert result.exit_code == 1  # 8 of 12 hypervisors OK
    for text in ("relay[0:2)", "leaf 2", "SLOW", "20.0", "3 heartbeats missed", f"hypervisors ok 8/{HYPERVISORS}"):
        assert text in result.stdout
    assert result.stdout.index("relay[0:2)") < result.stdout.index("leaf 2")
    # The root is labelled root, not relay[0:3): killing it would end the cloud (issue 16).
    assert "relay[0:3)" not in result.stdout
    assert [line.split()[1:5:2] for line in result.stdout.splitlines() if " 7 " in line] == [["root", "root"]]


def test_topology_json(fake_root: tuple[str, FakeRoot]) -> None:
    endpoint, _ = fake_root
    result = run("tree", "--endpoint", endpoint, "topology", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["hypervisors"] == HYPERVISORS


def test_up_exits_1_when_the_root_dies_before_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(start, "root_command", lambda settings: [sys.executable, "-c", "raise SystemExit(4)"])
    result = run("tree", "up", "--grpc", "127.0.0.1:1", "--hypervisors", "4")
    assert result.exit_code == 1
    assert "the root exited with code 4 before the tree was ready" in result.stderr


def test_up_rejects_a_bad_shape_with_exit_2() -> None:
    result = run("tree", "up", "--fanout", "1")
    assert result.exit_code == 2
    assert "fanout" in result.stderr.lower()


def test_stop_child_terminates_then_kills() -> None:
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], process_group=0)
    assert start.stop_child(polite, grace_s=5) == -signal.SIGTERM
    ignores_sigterm = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); time.sleep(60)"
    )
    stubborn = subprocess.Popen([sys.executable, "-c", ignores_sigterm], process_group=0, stdout=subprocess.PIPE)
    assert stubborn.stdout is not None and stubborn.stdout.readline()  # SIGTERM is ignored from here on
    assert start.stop_child(stubborn, grace_s=0.2) == -signal.SIGKILL
