"""The one registry of agent operations: each name's request and result message types.

An operation is named by a string (``vm.create``) and carries one request message in
``Command.request`` and, when OK and not empty, one result message in ``Reply.result``, both
as ``google.protobuf.Any`` (proto/README.md, "Operations: how they are carried and
versioned"). The API packs requests and reads results here; agents unpack requests here.
The messages and their contracts are in proto/v1/compute.proto, image.proto, network.proto,
storage.proto and diag.proto.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf import any_pb2
from google.protobuf.json_format import MessageToDict, ParseDict, ParseError
from google.protobuf.message import Message

from cloudland.errors import InvalidRequest
from cloudland_proto.v1 import compute_pb2 as compute
from cloudland_proto.v1 import diag_pb2 as diag
from cloudland_proto.v1 import envelope_pb2 as pb
from cloudland_proto.v1 import image_pb2 as image
from cloudland_proto.v1 import network_pb2 as network
from cloudland_proto.v1 import storage_pb2 as storage


@dataclass(frozen=True)
class Types:
    """The message types of one operation."""

    request: type[Message]
    result: type[Message]


OPERATIONS: dict[str, Types] = {
    "ping": Types(diag.PingRequest, diag.PingResult),
    "inventory": Types(diag.InventoryRequest, diag.InventoryResult),
    "sleep": Types(diag.SleepRequest, diag.SleepResult),
    "test.count": Types(diag.TestCountRequest, diag.TestCountResult),
    "test.slow": Types(diag.TestSlowRequest, diag.TestSlowResult),
    "test.fail": Types(diag.TestFailRequest, diag.TestFailResult),
    "test.break_report": Types(diag.TestBreakReportRequest, diag.TestBreakReportResult),
    "test.send_raw": Types(diag.TestSendRawRequest, diag.TestSendRawResult),
    "test.seed_domains": Types(diag.TestSeedDomainsRequest, diag.TestSeedDomainsResult),
    "vm.create": Types(compute.VmCreateRequest, compute.VmCreateResult),
    "vm.start": Types(compute.VmStartRequest, compute.VmStartResult),
    "vm.stop": Types(compute.VmStopRequest, compute.VmStopResult),
    "vm.reboot": Types(compute.VmRebootRequest, compute.VmRebootResult),
    "vm.delete": Types(compute.VmDeleteRequest, compute.VmDeleteResult),
    "vm.resize": Types(compute.VmResizeRequest, compute.VmResizeResult),
    "vm.rebuild": Types(compute.VmRebuildRequest, compute.VmRebuildResult),
    "vm.capture": Types(compute.VmCaptureRequest, compute.VmCaptureResult),
    "vm.attach_nic": Types(compute.VmAttachNicRequest, compute.VmAttachNicResult),
    "vm.detach_nic": Types(compute.VmDetachNicRequest, compute.VmDetachNicResult),
    "vm.get": Types(compute.VmGetRequest, compute.VmGetResult),
    "vm.list": Types(compute.VmListRequest, compute.VmListResult),
    "vm.console": Types(compute.VmConsoleRequest, compute.VmConsoleResult),
    "image.evict": Types(image.ImageEvictRequest, image.ImageEvictResult),
    "net.sync": Types(network.NetSyncRequest, network.NetSyncResult),
    "net.apply": Types(network.NetApplyRequest, network.NetApplyResult),
    "net.show": Types(network.NetShowRequest, network.NetShowResult),
    "vol.create": Types(storage.VolumeCreateRequest, storage.VolumeCreateResult),
    "vol.clone": Types(storage.VolumeCloneRequest, storage.VolumeCloneResult),
    "vol.delete": Types(storage.VolumeDeleteRequest, storage.VolumeDeleteResult),
    "vol.extend": Types(storage.VolumeExtendRequest, storage.VolumeExtendResult),
    "vol.snapshot": Types(storage.VolumeSnapshotRequest, storage.VolumeSnapshotResult),
    "vol.snapshot_delete": Types(storage.VolumeSnapshotDeleteRequest, storage.VolumeSnapshotDeleteResult),
    "vol.attach": Types(storage.VolumeAttachRequest, storage.VolumeAttachResult),
    "vol.detach": Types(storage.VolumeDetachRequest, storage.VolumeDetachResult),
}

# Every result type by its full name: a reply names its result's type, not its operation.
_RESULTS: dict[str, type[Message]] = {t.result.DESCRIPTOR.full_name: t.result for t in OPERATIONS.values()}


def types_of(op: str) -> Types:
    """The message types of ``op``; InvalidRequest naming it if there is no such operation."""
    types = OPERATIONS.get(op)
    if types is None:
        raise InvalidRequest(f"unknown operation {op!r}")
    return types


def _check(op: str, msg: Any, expected: type[Message], what: str) -> None:
    if isinstance(msg, dict):
        raise TypeError(f"{op}: the {what} must be a {expected.DESCRIPTOR.full_name} message, not a dict")
    if not isinstance(msg, expected):
        raise TypeError(f"{op}: the {what} must be a {expected.DESCRIPTOR.full_name}, "
                        f"got {type(msg).__name__}")


def pack(op: str, msg: Message) -> any_pb2.Any:
    """``msg``, the request of ``op``, as an Any for ``Command.request``; TypeError for another type."""
    _check(op, msg, types_of(op).request, "request")
    packed = any_pb2.Any()
    packed.Pack(msg)
    return packed


def pack_result(op: str, msg: Message) -> any_pb2.Any:
    """``msg``, the result of ``op``, as an Any for ``Reply.result``; TypeError for another type."""
    _check(op, msg, types_of(op).result, "result")
    packed = any_pb2.Any()
    packed.Pack(msg)
    return packed


def request_of(command: pb.Command) -> Message:
    """The request ``command`` carries, unpacked; an unset one is the request type's defaults.

    InvalidRequest (INVALID_ARGUMENT at the agent) for an unknown operation, or a request of
    another type, naming both types.
    """
    expected = types_of(command.operation).request
    msg = expected()
    if not command.HasField("request"):
        return msg
    if not command.request.Unpack(msg):
        raise InvalidRequest(f"{command.operation} takes a {expected.DESCRIPTOR.full_name}, got "
                             f"{command.request.type_url.rpartition('/')[2] or 'an untyped request'}")
    return msg


def result_of(reply: pb.Reply, op: str | None = None) -> Message | None:
    """The result ``reply`` carries, unpacked; None without one, unless ``op`` is given: then
    an OK reply without result (the compact form, §3) is the result type's defaults.

    InvalidRequest for a result type this registry does not know, or not ``op``'s.
    """
    if not reply.HasField("result"):
        return types_of(op).result() if op is not None and reply.status == pb.OK else None
    name = reply.result.type_url.rpartition("/")[2]
    kind = types_of(op).result if op is not None else _RESULTS.get(name)
    if kind is None or kind.DESCRIPTOR.full_name != name:
        raise InvalidRequest(f"reply of hypervisor {reply.hypervisor} (job {reply.job_id}) carries an "
                             f"unexpected result type {name!r}")
    msg = kind()
    reply.result.Unpack(msg)
    return msg


def parse(op: str, fields: dict[str, Any]) -> Message:
    """``op``'s request message from a JSON object's fields (as the .proto names them): what the
    CLI's ``--args`` and the tests write. InvalidRequest, one line, naming a bad field."""
    request = types_of(op).request()
    try:
        return ParseDict(fields, request)
    except ParseError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "bad field"
        raise InvalidRequest(f"not a {request.DESCRIPTOR.full_name}: {first}") from exc


def as_dict(msg: Message | None) -> dict[str, Any]:
    """A message as a JSON object with every field (bytes in base64, 64-bit numbers as numbers);
    None as an empty one."""
    if msg is None:
        return {}
    return MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True,
                         unquote_int64_if_possible=True)
