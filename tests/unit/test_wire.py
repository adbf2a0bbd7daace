"""Envelope encoding and strict decoding (launcher/wire.py, proto/README.md §5)."""

from __future__ import annotations

import random

import pytest
from google.protobuf import struct_pb2

from cloudland import operations
from cloudland.errors import WireError
from cloudland_launcher import wire
from cloudland_proto.v1 import diag_pb2 as diag
from cloudland_proto.v1 import envelope_pb2 as pb

SENDER = "relay[32:64) pid 4242"


def node(first: int, end: int) -> pb.NodeId:
    return pb.NodeId(first_leaf=first, end_leaf=end)


def args(**values: object) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values)
    return s


REPORT = pb.HypervisorReport(
    hypervisor=7, hostname="sim-00007", cpus=64, memory_kib=64 << 20, free_memory_kib=1 << 20,
    domains=3, running_domains=2,
)
PEER = pb.PeerStatus(
    node=node(32, 64), relay=True, state=pb.PEER_SLOW, pid=4242, host="n1", last_heard_ms=1_700_000_000_000,
    respawns=1, rss_kib=30_000, pss_kib=20_000, replies_in=5, replies_out=2,
)

BODIES: dict[str, object] = {
    "assign": pb.Assign(
        node=node(0, 32), hypervisors=1025, per_leaf=1, fanout=32, heartbeat_s=1.0, slow_after=3,
        lost_after=10, max_sleep_s=0.005, linger_s=0.05, agent=args(driver="test", test_ops=True),
        leaf_command=["python", "-m", "cloudland_agents.leaf"],
        relay_command=["python", "-m", "cloudland_launcher.relay"], parent_pid=99, parent_host="n0",
    ),
    "hello": pb.Hello(node=node(3, 4), pid=123, host="n2", inventory=[REPORT], peers=[PEER]),
    "command": pb.Command(
        job_id="job-1", targets=pb.Targets(set=pb.HypervisorSet(ids=[1, 5, 1024])), operation="sleep",
        request=operations.pack("sleep", diag.SleepRequest(seconds=0.5)), deadline_ms=1_700_000_030_000,
    ),
    "replies": pb.ReplyBatch(replies=[
        pb.Reply(job_id="job-1", hypervisor=1, status=pb.OK,
                 result=operations.pack_result("sleep", diag.SleepResult(slept=0.5))),
        pb.Reply(job_id="job-1", hypervisor=5, status=pb.FAILED, error="boom (hypervisor 5, job job-1)"),
    ]),
    "heartbeat": pb.Heartbeat(reports=[REPORT], peers=[PEER], rejected=2),
    "event": pb.PeerEvent(node=node(32, 64), state=pb.PEER_LOST, reason="silent 10 s", at_ms=1_700_000_000_500),
    "goodbye": pb.Goodbye(reason="shutting down"),
}


@pytest.mark.parametrize("kind", sorted(BODIES))
def test_round_trip(kind: str) -> None:
    body = BODIES[kind]
    data = wire.encode(**{kind: body})
    for view in (data, bytearray(data), memoryview(data)):
        envelope = wire.decode(view, SENDER)
        assert envelope.version == pb.WIRE_VERSION_1
        assert envelope.WhichOneof("body") == kind
        assert getattr(envelope, kind) == body


def test_every_body_kind_is_covered() -> None:
    oneof = pb.Envelope.DESCRIPTOR.oneofs_by_name["body"]
    assert {f.name for f in oneof.fields} == set(BODIES)


@pytest.mark.parametrize("kind", sorted(BODIES))
def test_empty_body_still_says_what_it_is(kind: str) -> None:
    """An all-default body is still a body: the oneof field is on the wire with length 0."""
    empty = type(BODIES[kind])()
    assert wire.decode(wire.encode(**{kind: empty}), SENDER).WhichOneof("body") == kind


def _random_bytes(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


GARBAGE = {
    "empty": b"",
    "random-1": _random_bytes(1, 1),
    "random-16": _random_bytes(2, 16),
    "random-64": _random_bytes(3, 64),
    "random-4096": _random_bytes(4, 4096),
    "not-protobuf": b"\xff\xfeTHIS IS NOT PROTOBUF",
    "not-protobuf-long": b"\xff\xfeTHIS IS NOT PROTOBUF" + bytes(range(256)),  # what test.send_raw sends
    "version-0": pb.Envelope(version=0, goodbye=pb.Goodbye(reason="x")).SerializeToString(),
    "version-2": pb.Envelope(version=2, goodbye=pb.Goodbye(reason="x")).SerializeToString(),
    "no-body": pb.Envelope(version=pb.WIRE_VERSION_1).SerializeToString(),
    "unknown-field-only": b"\x50\x01",  # field 10, varint: parses, but says nothing
    "truncated": wire.encode(goodbye=pb.Goodbye(reason="shutting down"))[:-3],
}


@pytest.mark.parametrize("name", sorted(GARBAGE))
def test_garbage_is_refused_naming_the_sender(name: str) -> None:
    data = GARBAGE[name]
    with pytest.raises(WireError) as caught:
        wire.decode(data, SENDER)
    assert SENDER in str(caught.value)


@pytest.mark.parametrize(("name", "words"), [("version-0", "version 0"), ("version-2", "version 2"), ("no-body", "no body")])
def test_refusal_says_why(name: str, words: str) -> None:
    with pytest.raises(WireError, match=words):
        wire.decode(GARBAGE[name], SENDER)
