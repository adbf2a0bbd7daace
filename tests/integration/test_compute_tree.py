"""The vm.* operations through a real MPI tree: a VM lands on exactly the hypervisor it was sent to.

8 hypervisors, 2 per leaf rank, fan-out 2: hypervisors 3 and 4 sit on different
leaves under different relays, so a VM showing on 4 would be a routing bug.
"""

from __future__ import annotations

import uuid
from typing import Any

from cloudland.client import struct_to_dict
from cloudland_proto.v1 import envelope_pb2 as pb


def vms(tree: Any, hypervisor: int) -> list[dict[str, Any]]:
    [reply] = tree.client.run("vm.list", hypervisor, timeout=30)
    assert reply.status == pb.OK, reply.error
    return struct_to_dict(reply.payload).get("vms", [])


def test_vm_lifecycle_through_the_tree(make_tree: Any) -> None:
    tree = make_tree(8, 2, 2)
    vm_uuid = str(uuid.uuid4())
    args = {"name": "web-1", "uuid": vm_uuid, "vcpus": 2, "memory_mib": 512,
            "disks": [{"path": "/var/lib/cloudland/images/web-1.qcow2"}],
            "nics": [{"bridge": "br0", "mac": "52:54:00:00:00:01"}], "metadata": {"tenant": "t1"}}

    [reply] = tree.client.run("vm.create", 3, args=args, timeout=30)
    assert (reply.hypervisor, reply.status) == (3, pb.OK), reply.error
    created = struct_to_dict(reply.payload)
    assert (created["created"], created["state"], created["uuid"]) == (True, "running", vm_uuid)

    [again] = tree.client.run("vm.create", 3, args=args, timeout=30)  # a replayed job
    assert again.status == pb.OK and struct_to_dict(again.payload)["created"] is False

    [listed] = vms(tree, 3)
    assert (listed["name"], listed["state"], listed["vcpus"], listed["memory_mib"]) == ("web-1", "running", 2, 512)
    assert vms(tree, 4) == []

    for _ in range(2):  # delete is idempotent: the second finds nothing and succeeds
        [deleted] = tree.client.run("vm.delete", 3, args={"name": "web-1"}, timeout=30)
        assert deleted.status == pb.OK, deleted.error
    assert vms(tree, 3) == []

    [missing] = tree.client.run("vm.get", 3, args={"name": "web-1"}, timeout=30)
    assert missing.status == pb.FAILED
    assert "VM 'web-1' not found" in missing.error and "hypervisor 3" in missing.error


def test_bad_arguments_are_refused_naming_the_field(make_tree: Any) -> None:
    tree = make_tree(8, 2, 2)
    args = {"name": "web-1", "uuid": str(uuid.uuid4()), "vcpus": 2, "memory_mib": 512}
    replies = tree.client.run("vm.create", [3, 4], args={**args, "cpus": 2}, timeout=30)
    assert sorted(r.hypervisor for r in replies) == [3, 4]
    for reply in replies:
        assert reply.status == pb.INVALID_ARGUMENT
        assert "'cpus'" in reply.error and f"hypervisor {reply.hypervisor}" in reply.error
    [reply] = tree.client.run("vm.create", 3, args={**args, "vcpus": 0}, timeout=30)
    assert reply.status == pb.INVALID_ARGUMENT and "'vcpus'" in reply.error
    assert vms(tree, 3) == []


def test_vms_reach_the_root_in_heartbeat_reports(make_tree: Any) -> None:
    """The reconciler's input: each hypervisor's VMs, carried up by heartbeats (every 0.5 s here)."""
    from cloudland_launcher.harness import wait_for

    tree = make_tree(8, 2, 2)
    vm_uuid = str(uuid.uuid4())
    [reply] = tree.client.run("vm.create", 5, args={"name": "db-1", "uuid": vm_uuid, "vcpus": 1,
                                                     "memory_mib": 256}, timeout=30)
    assert reply.status == pb.OK, reply.error

    def report_of(hv: int) -> pb.HypervisorReport:
        return next(r for r in tree.client.health(reports=True).reports if r.hypervisor == hv)

    wait_for(lambda: report_of(5).vms, 5, "hypervisor 5's report to list its VM")
    [vm] = report_of(5).vms
    assert (vm.name, vm.uuid, vm.state) == ("db-1", vm_uuid, "running")
    assert report_of(5).running_domains == 1 and not report_of(4).vms
    [gone] = tree.client.run("vm.delete", 5, args={"name": "db-1"}, timeout=30)
    assert gone.status == pb.OK, gone.error
    wait_for(lambda: not report_of(5).vms, 5, "the deleted VM to leave the report")


def test_deleting_many_vms_at_once_loses_no_leaf(make_tree: Any) -> None:
    """1000 VMs on 4 hypervisors deleted by 64 concurrent jobs while heartbeats (every 0.1 s)
    list every VM: a VM undefined between listing and reading it once killed its leaf."""
    from concurrent.futures import ThreadPoolExecutor

    tree = make_tree(4, 1, 32, 0.1)
    pids = {name: peer.pid for name, peer in tree.peers().items()}

    def run(op: str, i: int, args: dict[str, Any]) -> str:
        [reply] = tree.client.run(op, i % 4, args=args, timeout=60, job_id=f"{op}-{i}")
        return "OK" if reply.status == pb.OK else reply.error

    def create(i: int) -> str:
        return run("vm.create", i, {"name": f"vm-{i}", "uuid": str(uuid.uuid5(uuid.NAMESPACE_DNS, f"vm-{i}")),
                                    "vcpus": 1, "memory_mib": 128})

    with ThreadPoolExecutor(64) as pool:
        assert set(pool.map(create, range(1000))) == {"OK"}
        assert set(pool.map(lambda i: run("vm.delete", i, {"name": f"vm-{i}"}), range(1000))) == {"OK"}
    assert all(vms(tree, hv) == [] for hv in range(4))
    peers = tree.peers()
    assert {name: peer.pid for name, peer in peers.items()} == pids, "a leaf was lost and respawned"
    assert all(peer.state == pb.PEER_OK and not peer.respawns for peer in peers.values())
    assert not any(tree.log(name) for name in pids), "a leaf logged a warning or a crash"
