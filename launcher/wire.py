"""Encoding and strict decoding of the envelopes that cross MPI links (proto/README.md §5)."""

from __future__ import annotations

from google.protobuf.message import DecodeError

from cloudland.errors import WireError
from cloudland_proto.v1 import envelope_pb2 as pb

VERSION = pb.WIRE_VERSION_1


def encode(**body: object) -> bytes:
    """Serialise one envelope, e.g. ``encode(replies=batch)``."""
    return pb.Envelope(version=VERSION, **body).SerializeToString()


def decode(data: bytes | bytearray | memoryview, sender: str) -> pb.Envelope:
    """Parse bytes from ``sender``; anything but a version-1 envelope with a body is refused.

    Protobuf parsing is lenient (stray bytes may parse as unknown fields), so the
    version and the body are checked explicitly: a message must say what it is.
    """
    envelope = pb.Envelope()
    try:
        envelope.ParseFromString(bytes(data))
    except DecodeError as exc:
        raise WireError(f"{len(data)} bytes from {sender} are not a protobuf envelope") from exc
    if envelope.version != VERSION:
        raise WireError(f"message from {sender} has wire version {envelope.version}, expected {VERSION}")
    if envelope.WhichOneof("body") is None:
        raise WireError(f"message from {sender} has no body ({len(data)} bytes)")
    return envelope
