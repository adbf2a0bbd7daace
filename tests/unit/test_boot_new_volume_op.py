"""vm.create with a new boot volume (compute.proto ``BootVolume.create``, issue 13) on a simulated
hypervisor whose storage driver is the recording fake: the volume is made from the image before
the domain is defined with it as vda; a replay leaves both; a failed make defines nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudland.errors import VolumeError
from cloudland_agents import ops
from cloudland_agents.compute import ops as compute_ops  # noqa: F401 - registers vm.*
from cloudland_agents.hypervisor import Hypervisor, open_simulated
from cloudland_agents.storage.fake import FakeVolumes
from cloudland_agents.storage.ops import storage_for
from cloudland_proto.v1 import compute_pb2 as cpb
from cloudland_proto.v1 import image_pb2 as ipb
from cloudland_proto.v1 import storage_pb2 as spb
from tests.unit.agentcall import call

GIB = 1 << 30
UUID = "0b8f6a52-1c3d-4e5f-8a9b-0c1d2e3f4a5c"


@pytest.fixture
def hv(tmp_path: Path) -> Iterator[tuple[Hypervisor, FakeVolumes]]:
    hypervisor = open_simulated(6, tmp_path)
    fake = FakeVolumes(6)
    fake.images[3] = (512 << 20, b"the image")
    storage_for.set(hypervisor, fake)
    yield hypervisor, fake
    hypervisor.close()


def create(hypervisor: Hypervisor, name: str, volume_id: int) -> dict:
    request = cpb.VmCreateRequest(
        spec=cpb.DomainSpec(name=name, uuid=UUID if name == "web" else "0b8f6a52-1c3d-4e5f-8a9b-0c1d2e3f4a5d",
                            vcpus=1, memory_mib=256),
        boot_volume=cpb.BootVolume(volume=spb.VolumeRef(id=volume_id, backend="local"), attachment_id=9,
                                   create=cpb.NewBootVolume(size_bytes=GIB, image=ipb.ImageSource(image_id=3))))
    return call(ops.Context(hypervisor, "job-1", 0.0, lambda _b: None), "vm.create", request)


def test_the_volume_is_made_from_the_image_then_the_domain_boots_from_it(hv: tuple[Hypervisor, FakeVolumes]) -> None:
    hypervisor, fake = hv
    made = create(hypervisor, "web", 5)
    assert made["created"] is True
    assert [verb for verb, _ in fake.calls] == ["create", "boot_disk"]
    key = ("local", 5)
    assert fake.sizes[key] == GIB and fake.content[key] == b"the image"
    disks = made["vm"]["disks"]
    assert any(d["target"] == "vda" for d in disks), disks
    # A replay: the volume is found made, the VM exists; nothing changes.
    assert create(hypervisor, "web", 5)["created"] is False and fake.sizes[key] == GIB


def test_a_failed_make_defines_no_domain(hv: tuple[Hypervisor, FakeVolumes]) -> None:
    hypervisor, fake = hv
    fake.fail_next("create", VolumeError(6, "rbd import failed: pool full"))
    with pytest.raises(VolumeError, match="pool full"):
        create(hypervisor, "db", 7)
    assert [verb for verb, _ in fake.calls] == ["create"]
    listed = call(ops.Context(hypervisor, "job-2", 0.0, lambda _b: None), "vm.list", {})
    assert listed.get("vms", []) == []
