"""Call an agent operation as the leaf does, without MPI: its request message built from a dict
(proto field names, as ``--args`` takes them), its result message read back as a dict."""

from __future__ import annotations

from typing import Any

from google.protobuf.json_format import ParseDict
from google.protobuf.message import Message

from cloudland import operations
from cloudland_agents import ops


def request(name: str, fields: dict[str, Any] | None = None) -> Message:
    """``name``'s request message with ``fields`` (json_format's ParseError, naming a bad field)."""
    return ParseDict(fields or {}, operations.types_of(name).request())


def call(ctx: ops.Context, name: str, fields: dict[str, Any] | Message | None = None) -> dict[str, Any]:
    """Run operation ``name`` (test-only ones too) in ``ctx``; its result as a dict."""
    op = ops.lookup(name, test_ops=True)
    assert op is not None, name
    return operations.as_dict(op.run(ctx, fields if isinstance(fields, Message) else request(name, fields)))
