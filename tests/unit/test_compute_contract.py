"""One contract suite, two drivers: LibvirtCompute on a simulated hypervisor and FakeCompute.

Every test here states a postcondition of agents/compute.py's docstring; both
drivers must meet it (nova's fake/real pairing, ARCHITECTURE.md "Drivers").
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from cloudland.errors import CloudLandError, DriverError, InvalidRequest
from cloudland_agents.compute import (
    Compute, Disk, DomainSpec, LibvirtCompute, Nic, VMConflict, VMNotFound, VMStateError,
)
from cloudland_agents.compute_fake import FakeCompute
from cloudland_agents.hypervisor import open_simulated

HV = 3


@pytest.fixture(params=["libvirt", "fake"])
def compute(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Compute]:
    if request.param == "fake":
        yield FakeCompute(HV)
        return
    hv = open_simulated(HV, tmp_path)
    # A short poll: the test driver's graceful shutdown is immediate anyway.
    yield LibvirtCompute(hv.conn, hv.id, poll_s=0.01)
    hv.close()


def spec(name: str = "web-1", **changes: object) -> DomainSpec:
    base = DomainSpec(
        name=name, uuid=str(uuid.uuid5(uuid.NAMESPACE_DNS, name)), vcpus=2, memory_mib=512,
        disks=(Disk("/var/lib/cloudland/images/web-1.qcow2"),),
        nics=(Nic("br-tenant1", "52:54:00:12:34:56"),), metadata={"tenant": "t1"},
    )
    return replace(base, **changes)


def names(compute: Compute) -> list[str]:
    return sorted(r["name"] for r in compute.list())


def test_create_runs_the_vm(compute: Compute) -> None:
    record = compute.create(spec())
    assert record["created"] is True
    assert (record["name"], record["uuid"], record["state"]) == ("web-1", spec().uuid, "running")
    assert (record["vcpus"], record["memory_mib"]) == (2, 512)
    assert record["disks"] == [{"path": "/var/lib/cloudland/images/web-1.qcow2", "format": "qcow2", "target": "vda"}]
    assert record["nics"] == [{"bridge": "br-tenant1", "mac": "52:54:00:12:34:56"}]
    assert record["metadata"] == {"tenant": "t1"}
    assert compute.get("web-1")["state"] == "running"


def test_create_again_is_idempotent(compute: Compute) -> None:
    compute.create(spec())
    compute.stop("web-1")
    again = compute.create(spec(vcpus=4))  # a replay: the existing VM is left as is
    assert again["created"] is False
    assert (again["state"], again["vcpus"]) == ("shutoff", 2)
    assert names(compute) == ["web-1"]


def test_create_conflicts_on_name_or_uuid_held_by_another_vm(compute: Compute) -> None:
    compute.create(spec())
    with pytest.raises(VMConflict, match="web-1"):
        compute.create(spec(uuid=str(uuid.uuid4())))
    with pytest.raises(VMConflict, match=f"hypervisor {HV}"):
        compute.create(spec(name="web-2", uuid=spec().uuid))
    assert names(compute) == ["web-1"]


def test_stop_start_reboot(compute: Compute) -> None:
    compute.create(spec())
    assert compute.stop("web-1")["state"] == "shutoff"
    assert compute.stop("web-1", force=True)["state"] == "shutoff"  # already off: success
    assert compute.start("web-1")["state"] == "running"
    assert compute.start("web-1")["state"] == "running"  # already running: success
    assert compute.reboot("web-1")["state"] == "running"
    assert compute.reboot("web-1", force=True)["state"] == "running"
    assert compute.stop("web-1", force=True)["state"] == "shutoff"
    assert compute.reboot("web-1")["state"] == "running"  # a shut-off VM is started


def test_resize_a_stopped_vm(compute: Compute) -> None:
    compute.create(spec())
    compute.stop("web-1")
    record = compute.resize("web-1", 4, 2048)
    assert (record["vcpus"], record["memory_mib"], record["state"]) == (4, 2048, "shutoff")
    assert record["uuid"] == spec().uuid and record["disks"] == compute.get("web-1")["disks"]
    assert compute.start("web-1")["vcpus"] == 4


def test_resize_a_running_vm_is_refused(compute: Compute) -> None:
    compute.create(spec())
    with pytest.raises(VMStateError, match="shut off"):
        compute.resize("web-1", 4, 2048)
    assert compute.get("web-1")["vcpus"] == 2


def test_resize_validates_the_size(compute: Compute) -> None:
    compute.create(spec())
    compute.stop("web-1")
    with pytest.raises(InvalidRequest, match="memory_mib"):
        compute.resize("web-1", 2, 1)
    assert compute.get("web-1")["memory_mib"] == 512


def test_rebuild_keeps_name_and_uuid(compute: Compute) -> None:
    compute.create(spec())
    new_disk = Disk("/var/lib/cloudland/images/web-1-v2.raw", "raw", "vda")
    record = compute.rebuild(spec(disks=(new_disk,)))
    assert (record["name"], record["uuid"], record["state"]) == ("web-1", spec().uuid, "running")
    assert record["disks"] == [{"path": new_disk.path, "format": "raw", "target": "vda"}]
    compute.stop("web-1")
    assert compute.rebuild(spec())["state"] == "shutoff"  # power state is kept
    with pytest.raises(VMConflict, match="uuid"):
        compute.rebuild(spec(uuid=str(uuid.uuid4())))
    with pytest.raises(VMNotFound):
        compute.rebuild(spec(name="nope"))


def test_delete_is_idempotent(compute: Compute) -> None:
    compute.create(spec())
    assert compute.delete("web-1") == {"name": "web-1", "deleted": True}
    assert names(compute) == []
    assert compute.delete("web-1") == {"name": "web-1", "deleted": False}
    compute.create(spec())  # the same uuid can be created again after delete
    assert names(compute) == ["web-1"]


def test_get_of_a_missing_vm_names_vm_and_hypervisor(compute: Compute) -> None:
    with pytest.raises(VMNotFound) as caught:
        compute.get("ghost")
    assert isinstance(caught.value, DriverError) and isinstance(caught.value, CloudLandError)
    assert "'ghost'" in str(caught.value) and f"hypervisor {HV}" in str(caught.value)
    assert caught.value.hypervisor == HV
    for verb in (compute.start, compute.stop, compute.reboot):
        with pytest.raises(VMNotFound, match="ghost"):
            verb("ghost")


def test_concurrent_creates_of_different_vms(compute: Compute) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(20)

    def create(i: int) -> None:
        try:
            barrier.wait()
            compute.create(spec(f"vm-{i:02d}", nics=(Nic("br0", f"52:54:00:00:00:{i:02x}"),)))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    records = compute.list()
    assert sorted(r["name"] for r in records) == [f"vm-{i:02d}" for i in range(20)]
    assert {r["state"] for r in records} == {"running"}


def test_concurrent_verbs_on_one_vm_are_serialised(compute: Compute) -> None:
    compute.create(spec())
    errors: list[BaseException] = []

    def cycle() -> None:
        try:
            for _ in range(10):
                compute.stop("web-1", force=True)
                compute.start("web-1")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=cycle) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert compute.get("web-1")["state"] == "running"


def test_fake_fail_next_fails_exactly_the_next_call() -> None:
    fake = FakeCompute(HV)
    fake.create(spec())
    fake.stop("web-1")
    error = DriverError(HV, "injected")
    fake.fail_next("start", error)
    with pytest.raises(DriverError, match="injected") as caught:
        fake.start("web-1")
    assert caught.value is error
    assert fake.get("web-1")["state"] == "shutoff"  # the failed start did nothing
    assert fake.start("web-1")["state"] == "running"
    assert [verb for verb, _ in fake.calls] == ["create", "stop", "start", "get", "start"]
    assert fake.calls[2] == ("start", ("web-1",))
