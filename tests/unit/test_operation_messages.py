"""The registry of operation messages (cloudland/operations.py): every operation's request and
result round-trip through a Command and a Reply; another type, an unknown type or an unknown
operation is refused, at the sender (TypeError) or at the receiver (INVALID_ARGUMENT)."""

from __future__ import annotations

import pytest
from google.protobuf import any_pb2

from cloudland import operations
from cloudland.client import RootClient
from cloudland.errors import InvalidRequest
from cloudland_agents import ops
from cloudland_agents.compute import console_ops, ops as compute_ops  # noqa: F401 - they register
from cloudland_agents.images import ops as image_ops  # noqa: F401 - registers image.evict
from cloudland_agents.network import ops as network_ops  # noqa: F401 - registers net.sync, net.apply, net.show
from cloudland_agents.storage import ops as storage_ops  # noqa: F401 - registers vol.*
from cloudland_proto.v1 import compute_pb2 as cpb
from cloudland_proto.v1 import diag_pb2 as diag
from cloudland_proto.v1 import envelope_pb2 as pb
from cloudland_proto.v1 import image_pb2 as ipb
from cloudland_proto.v1 import network_pb2 as npb
from cloudland_proto.v1 import storage_pb2 as spb

VOL = spb.VolumeRef(id=7, backend="ceph")

# One non-default request and result per operation: a round trip must keep every field set.
SAMPLES = {
    "ping": (diag.PingRequest(), diag.PingResult()),
    "inventory": (diag.InventoryRequest(), diag.InventoryResult(hostname="h", cpus=4, domains=["a"])),
    "sleep": (diag.SleepRequest(seconds=0.5), diag.SleepResult(slept=0.5)),
    "test.count": (diag.TestCountRequest(key="k"), diag.TestCountResult(count=3)),
    "test.slow": (diag.TestSlowRequest(seconds=1, slow=[2, 5]), diag.TestSlowResult(slept=1)),
    "test.fail": (diag.TestFailRequest(message="m"), diag.TestFailResult()),
    "test.break_report": (diag.TestBreakReportRequest(), diag.TestBreakReportResult()),
    "test.send_raw": (diag.TestSendRawRequest(kind="command"), diag.TestSendRawResult(sent="command")),
    "test.seed_domains": (diag.TestSeedDomainsRequest(per_hypervisor=20), diag.TestSeedDomainsResult()),
    "vm.create": (cpb.VmCreateRequest(spec=cpb.DomainSpec(name="web-1", vcpus=2, metadata={"a": "b"}),
                                      guest=cpb.Guest(image=ipb.ImageSource(image_id=7), user_data=b"\0x")),
                  cpb.VmCreateResult(vm=cpb.VmRecord(name="web-1", state="running"), created=True)),
    "vm.start": (cpb.VmStartRequest(name="web-1"), cpb.VmStartResult(vm=cpb.VmRecord(vnc_port=5901))),
    "vm.stop": (cpb.VmStopRequest(name="web-1", force=True, timeout_s=0), cpb.VmStopResult(vm=cpb.VmRecord(name="x"))),
    "vm.reboot": (cpb.VmRebootRequest(name="web-1", timeout_s=5), cpb.VmRebootResult(vm=cpb.VmRecord(name="x"))),
    "vm.delete": (cpb.VmDeleteRequest(name="web-1", uuid="u"), cpb.VmDeleteResult(name="web-1", deleted=True)),
    "vm.resize": (cpb.VmResizeRequest(name="web-1", vcpus=4, memory_mib=1024),
                  cpb.VmResizeResult(vm=cpb.VmRecord(vcpus=4))),
    "vm.rebuild": (cpb.VmRebuildRequest(spec=cpb.DomainSpec(name="web-1")),
                   cpb.VmRebuildResult(vm=cpb.VmRecord(state="shutoff"))),
    "vm.attach_nic": (cpb.VmAttachNicRequest(name="web-1", nic=cpb.Nic(mac="02:00:00:00:00:07", vni=4097, mtu=1450,
                                                                       ips=["10.0.0.3/24"], port_id=7)),
                      cpb.VmAttachNicResult(vm=cpb.VmRecord(name="web-1", state="running"), attached=True)),
    "vm.detach_nic": (cpb.VmDetachNicRequest(name="web-1", mac="02:00:00:00:00:07"),
                      cpb.VmDetachNicResult(vm=cpb.VmRecord(name="web-1"), detached=True)),
    "vm.capture": (cpb.VmCaptureRequest(name="web-1", target=ipb.ImageTarget(image_id=9, token="t")),
                   cpb.VmCaptureResult(image_id=9, size_bytes=1 << 40, sha256="ab" * 32)),
    "vm.get": (cpb.VmGetRequest(name="web-1"), cpb.VmGetResult(vm=cpb.VmRecord(name="web-1"))),
    "vm.list": (cpb.VmListRequest(), cpb.VmListResult(vms=[cpb.VmRecord(name="a"), cpb.VmRecord(name="b")])),
    "vm.console": (cpb.VmConsoleRequest(name="web-1", offset=3, input=b"\x03"),
                   cpb.VmConsoleResult(data=b"\xff\x00", offset=5, size=9)),
    "image.evict": (ipb.ImageEvictRequest(sha256="ab" * 32), ipb.ImageEvictResult(in_use=True)),
    "net.sync": (npb.NetSyncRequest(full=True, vpcs=[npb.NetVpcState(
                     vpc_id=7, generation=3, mtu=1450, domain="vpc-7.test",
                     subnets=[npb.NetSubnet(id=1, vpc_id=7, vni=100, cidr="10.0.0.0/24", dhcp=True)],
                     ports=[npb.NetPort(id=2, subnet_id=1, mac="02:00:00:00:00:01", ips=["10.0.0.5"], hypervisor=4,
                                        vtep="192.0.2.4")])]),
                 npb.NetSyncResult(vpcs=[npb.NetVpcVersion(vpc_id=7, generation=3)], added=5, unchanged=2)),
    "net.apply": (npb.NetApplyRequest(vpc_id=7, from_generation=3, generation=4, remove_ports=[2]),
                  npb.NetApplyResult(generation=4, need_sync=True)),
    "net.show": (npb.NetShowRequest(macs=["02:00:00:00:00:01"]),
                 npb.NetShowResult(vpcs=[npb.NetVpcVersion(vpc_id=7, generation=4)],
                                   fdb=[npb.NetFdbEntry(vni=100, mac="02:00:00:00:00:01", vtep="192.0.2.4",
                                                        since_ms=1_765_000_000_000)])),
    "vol.create": (spb.VolumeCreateRequest(volume=VOL, size_bytes=1 << 30),
                   spb.VolumeCreateResult(size_bytes=1 << 30, created=True, path="rbd:volumes/vol-7")),
    "vol.clone": (spb.VolumeCloneRequest(volume=VOL, source=spb.VolumeRef(id=3, backend="ceph"), snapshot_id=2,
                                         size_bytes=1 << 31),
                  spb.VolumeCloneResult(size_bytes=1 << 31, created=True, path="rbd:volumes/vol-7")),
    "vol.delete": (spb.VolumeDeleteRequest(volume=VOL), spb.VolumeDeleteResult(deleted=True)),
    "vol.extend": (spb.VolumeExtendRequest(volume=VOL, size_bytes=1 << 31, domain="cl-x"),
                   spb.VolumeExtendResult(size_bytes=1 << 31, online=True)),
    "vol.snapshot": (spb.VolumeSnapshotRequest(volume=VOL, snapshot_id=2),
                     spb.VolumeSnapshotResult(size_bytes=1 << 30, created=True)),
    "vol.snapshot_delete": (spb.VolumeSnapshotDeleteRequest(volume=VOL, snapshot_id=2),
                            spb.VolumeSnapshotDeleteResult(deleted=True)),
    "vol.attach": (spb.VolumeAttachRequest(volume=VOL, domain="cl-x", device="vdb", attachment_id=9, read_only=True),
                   spb.VolumeAttachResult(attached=True)),
    "vol.detach": (spb.VolumeDetachRequest(volume=VOL, domain="cl-x", attachment_id=9),
                   spb.VolumeDetachResult(detached=True)),
}


def test_every_operation_has_a_sample_and_an_agent() -> None:
    assert set(SAMPLES) == set(operations.OPERATIONS)
    assert set(ops.REGISTRY) <= set(operations.OPERATIONS)
    assert set(operations.OPERATIONS) == set(ops.REGISTRY)  # every contract has its handler


@pytest.mark.parametrize("op", sorted(SAMPLES))
def test_every_operation_round_trips(op: str) -> None:
    request, result = SAMPLES[op]
    types = operations.types_of(op)
    assert (type(request), type(result)) == (types.request, types.result)
    command = pb.Command(job_id="j1", operation=op, request=operations.pack(op, request))
    assert operations.request_of(pb.Command.FromString(command.SerializeToString())) == request
    reply = pb.Reply(job_id="j1", hypervisor=3, status=pb.OK, result=operations.pack_result(op, result))
    wire = pb.Reply.FromString(reply.SerializeToString())
    assert operations.result_of(wire) == result
    assert operations.result_of(wire, op) == result


@pytest.mark.parametrize("op", sorted(SAMPLES))
def test_an_unset_request_or_result_is_the_defaults(op: str) -> None:
    types = operations.types_of(op)
    assert operations.request_of(pb.Command(job_id="j1", operation=op)) == types.request()
    compact = pb.Reply(job_id="j1", hypervisor=3, status=pb.OK)  # the ok form carries none (§3)
    assert operations.result_of(compact, op) == types.result()
    assert operations.result_of(compact) is None
    assert operations.result_of(pb.Reply(job_id="j1", hypervisor=3, status=pb.FAILED), op) is None


def test_a_request_of_another_type_is_refused_naming_both() -> None:
    command = pb.Command(job_id="j1", operation="vm.start")
    command.request.Pack(cpb.VmStopRequest(name="web-1"))
    with pytest.raises(InvalidRequest, match=r"vm.start takes a cloudland.v1.VmStartRequest, "
                                             r"got cloudland.v1.VmStopRequest"):
        operations.request_of(command)


def test_an_unknown_type_is_refused() -> None:
    command = pb.Command(job_id="j1", operation="vm.start",
                         request=any_pb2.Any(type_url="type.googleapis.com/cloudland.v9.Nothing", value=b"\x01"))
    with pytest.raises(InvalidRequest, match="cloudland.v9.Nothing"):
        operations.request_of(command)
    reply = pb.Reply(job_id="j1", hypervisor=3, status=pb.OK, result=command.request)
    with pytest.raises(InvalidRequest, match="hypervisor 3.*job j1.*cloudland.v9.Nothing"):
        operations.result_of(reply)
    wrong = pb.Reply(job_id="j1", hypervisor=3, status=pb.OK,
                     result=operations.pack_result("vm.stop", cpb.VmStopResult()))
    with pytest.raises(InvalidRequest, match="VmStopResult"):
        operations.result_of(wrong, "vm.start")


def test_an_unknown_operation_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="unknown operation 'vm.fly'"):
        operations.types_of("vm.fly")
    with pytest.raises(InvalidRequest, match="unknown operation 'vm.fly'"):
        operations.pack("vm.fly", cpb.VmStartRequest())
    with pytest.raises(InvalidRequest, match="unknown operation 'vm.fly'"):
        operations.request_of(pb.Command(job_id="j1", operation="vm.fly"))


def test_the_sender_refuses_another_type_and_a_dict() -> None:
    with pytest.raises(TypeError, match="cloudland.v1.VmStartRequest"):
        operations.pack("vm.start", cpb.VmStopRequest(name="web-1"))
    with pytest.raises(TypeError, match="not a dict"):
        operations.pack("vm.start", {"name": "web-1"})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cloudland.v1.VmStartResult"):
        operations.pack_result("vm.start", cpb.VmStopResult())


def test_the_client_refuses_a_dict_before_dialling() -> None:
    client = RootClient("127.0.0.1:1")
    try:
        with pytest.raises(TypeError, match="vm.start: request must be its request message"):
            client.run("vm.start", 3, request={"name": "web-1"})  # type: ignore[arg-type]
    finally:
        client.close()
