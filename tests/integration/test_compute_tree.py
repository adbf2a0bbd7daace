"""The vm.* operations through a real MPI tree: a VM lands on exactly the hypervisor it was sent to.

8 hypervisors, 2 per leaf rank, fan-out 2: hypervisors 3 and 4 sit on different
leaves under different relays, so a VM showing on 4 would be a routing bug. The first four tests
share that tree (``tree``: starting one is most of their time); each leaves no VM behind.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from cloudland import operations, procinfo
from cloudland_launcher.harness import Tree, start_tree, stop_tree
from cloudland_proto.v1 import compute_pb2 as cpb
from cloudland_proto.v1 import envelope_pb2 as pb
from cloudland_proto.v1 import root_pb2


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tree]:
    """8 hypervisors, 2 per leaf, fan-out 2, for the module; stopped and checked for leftover ranks."""
    started = start_tree(tmp_path_factory.mktemp("compute-tree"), 8, 2, 2)
    yield started
    stop_tree(started)


def vms(tree: Any, hypervisor: int) -> list[dict[str, Any]]:
    [reply] = tree.client.run("vm.list", hypervisor, timeout=30)
    assert reply.status == pb.OK, reply.error
    return operations.as_dict(operations.result_of(reply, "vm.list"))["vms"]


def test_vm_lifecycle_through_the_tree(tree: Tree) -> None:
    vm_uuid = str(uuid.uuid4())
    args = {"name": "web-1", "uuid": vm_uuid, "vcpus": 2, "memory_mib": 512,
            "disks": [{"path": "/var/lib/cloudland/images/web-1.qcow2"}],
            "nics": [{"bridge": "br0", "mac": "52:54:00:00:00:01"}], "metadata": {"tenant": "t1"}}

    create = operations.parse("vm.create", {"spec": args})
    [reply] = tree.client.run("vm.create", 3, request=create, timeout=30)
    assert (reply.hypervisor, reply.status) == (3, pb.OK), reply.error
    created = operations.result_of(reply, "vm.create")
    assert isinstance(created, cpb.VmCreateResult)
    assert (created.created, created.vm.state, created.vm.uuid) == (True, "running", vm_uuid)

    [again] = tree.client.run("vm.create", 3, request=create, timeout=30)  # a replayed job
    assert again.status == pb.OK
    assert operations.result_of(again, "vm.create") == cpb.VmCreateResult(vm=created.vm, created=False)

    [listed] = vms(tree, 3)
    assert (listed["name"], listed["state"], listed["vcpus"], listed["memory_mib"]) == ("web-1", "running", 2, 512)
    assert vms(tree, 4) == []

    for _ in range(2):  # delete is idempotent: the second finds nothing and succeeds
        [deleted] = tree.client.run("vm.delete", 3, request=cpb.VmDeleteRequest(name="web-1"), timeout=30)
        assert deleted.status == pb.OK, deleted.error
    assert vms(tree, 3) == []

    [missing] = tree.client.run("vm.get", 3, request=cpb.VmGetRequest(name="web-1"), timeout=30)
    assert missing.status == pb.FAILED
    assert "VM 'web-1' not found" in missing.error and "hypervisor 3" in missing.error


def test_bad_arguments_are_refused_naming_the_field(tree: Tree) -> None:
    args = {"name": "web-1", "uuid": str(uuid.uuid4()), "vcpus": 2, "memory_mib": 512}
    bad = operations.parse("vm.create", {"spec": {**args, "vcpus": 0}})
    replies = tree.client.run("vm.create", [3, 4], request=bad, timeout=30)
    assert sorted(r.hypervisor for r in replies) == [3, 4]
    for reply in replies:
        assert reply.status == pb.INVALID_ARGUMENT
        assert "vcpus" in reply.error and f"hypervisor {reply.hypervisor}" in reply.error
    assert vms(tree, 3) == []


def test_a_request_of_another_type_is_refused_naming_operation_job_and_hypervisor(tree: Tree) -> None:
    """A request is its operation's message or nothing runs (proto/README.md, "Operations")."""
    command = pb.Command(job_id="wrong-type", operation="vm.create", targets=pb.Targets(hypervisor=3),
                         deadline_ms=procinfo.now_ms() + 30_000)
    command.request.Pack(cpb.VmDeleteRequest(name="web-1"))  # what the client itself would refuse
    [batch] = list(tree.client._stub.Dispatch(root_pb2.DispatchRequest(command=command), timeout=35))
    [reply] = batch.replies
    assert reply.status == pb.INVALID_ARGUMENT
    assert reply.error == ("vm.create takes a cloudland.v1.VmCreateRequest, got cloudland.v1.VmDeleteRequest "
                           "(hypervisor 3, job wrong-type)")
    assert vms(tree, 3) == []


def test_vms_reach_the_root_in_heartbeat_reports(tree: Tree) -> None:
    """The reconciler's input: each hypervisor's VMs, carried up by heartbeats (every 0.5 s here)."""
    from cloudland_launcher.harness import wait_for

    vm_uuid = str(uuid.uuid4())
    spec = cpb.DomainSpec(name="db-1", uuid=vm_uuid, vcpus=1, memory_mib=256)
    [reply] = tree.client.run("vm.create", 5, request=cpb.VmCreateRequest(spec=spec), timeout=30)
    assert reply.status == pb.OK, reply.error

    def report_of(hv: int) -> pb.HypervisorReport:
        return next(r for r in tree.client.health(reports=True).reports if r.hypervisor == hv)

    wait_for(lambda: report_of(5).vms, 5, "hypervisor 5's report to list its VM")
    [vm] = report_of(5).vms
    assert (vm.name, vm.uuid, vm.state) == ("db-1", vm_uuid, "running")
    assert report_of(5).running_domains == 1 and not report_of(4).vms
    [gone] = tree.client.run("vm.delete", 5, request=cpb.VmDeleteRequest(name="db-1"), timeout=30)
    assert gone.status == pb.OK, gone.error
    wait_for(lambda: not report_of(5).vms, 5, "the deleted VM to leave the report")


def test_deleting_many_vms_at_once_loses_no_leaf(make_tree: Any) -> None:
    """1000 VMs on 4 hypervisors deleted by 64 concurrent jobs while heartbeats (every 0.1 s)
    list every VM: a VM undefined between listing and reading it once killed its leaf."""
    from concurrent.futures import ThreadPoolExecutor

    tree = make_tree(4, 1, 32, 0.1)
    pids = {name: peer.pid for name, peer in tree.peers().items()}

    def run(op: str, i: int, args: dict[str, Any]) -> str:
        [reply] = tree.client.run(op, i % 4, request=operations.parse(op, args), timeout=60, job_id=f"{op}-{i}")
        return "OK" if reply.status == pb.OK else reply.error

    def create(i: int) -> str:
        return run("vm.create", i, {"spec": {"name": f"vm-{i}", "uuid": str(uuid.uuid5(uuid.NAMESPACE_DNS, f"vm-{i}")),
                                             "vcpus": 1, "memory_mib": 128}})

    with ThreadPoolExecutor(64) as pool:
        assert set(pool.map(create, range(1000))) == {"OK"}
        assert set(pool.map(lambda i: run("vm.delete", i, {"name": f"vm-{i}"}), range(1000))) == {"OK"}
    assert all(vms(tree, hv) == [] for hv in range(4))
    peers = tree.peers()
    assert {name: peer.pid for name, peer in peers.items()} == pids, "a leaf was lost and respawned"
    assert all(peer.state == pb.PEER_OK and not peer.respawns for peer in peers.values())
    assert not any(tree.log(name) for name in pids), "a leaf logged a warning or a crash"
