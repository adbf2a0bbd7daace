"""One contract suite, three drivers: FakeVolumes, Volumes on ``local`` (qcow2 files through
qemu-img) and Volumes on ``rbd`` (a real Ceph from tests/storage/ceph.py), each attaching to
the domains of a simulated hypervisor (test:///, the control path).

Every test states a postcondition of agents/storage/driver.py's docstring (the contract of
proto/v1/storage.proto). Content is written and read with qemu-io, so snapshots and clones are
checked on the bytes, not on the driver's word.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from cloudland.errors import InvalidRequest, VolumeBusy, VolumeError, VolumeNotFound
from cloudland_agents.compute.domain import DomainSpec, domain_xml
from cloudland_agents.hypervisor import open_simulated
from cloudland_agents.storage.disks import disks_of
from cloudland_agents.storage.driver import VolumeDriver, Volumes
from cloudland_agents.storage.fake import FakeVolumes
from cloudland_agents.storage.local import LocalStore
from cloudland_agents.storage.rbd import RbdConfig, RbdStore
from cloudland_agents.storage.store import MIB
from cloudland_proto.v1 import image_pb2 as ipb
from cloudland_proto.v1 import storage_pb2 as spb
from tests.storage.ceph import POOL, USER, CephCluster

HV = 4
# An image the hypervisor's cache holds: 2 MiB whose first 64 KiB are 0x3c.
IMAGE = ipb.ImageSource(image_id=7, disk_format="qcow2")


def _image_file(directory: Path) -> Path:
    path = directory / "image-7.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "2M"], check=True, timeout=60)
    assert _qemu_io(str(path), "qcow2", "write -P 0x3c 0 64k")
    return path


@dataclass
class Host:
    """A driver under test, the backend it holds, and how to seed domains and touch bytes."""

    volumes: VolumeDriver
    backend: str
    live_snapshots: bool
    add_domain: Callable[[str], None]
    write: Callable[[int, int, int], None]   # (volume id, byte pattern, offset): 64 KiB
    holds: Callable[[int, int, int], bool]   # the 64 KiB at offset have the pattern

    def ref(self, volume_id: int) -> spb.VolumeRef:
        return spb.VolumeRef(id=volume_id, backend=self.backend)


def _qemu_io(target: str, fmt: str, command: str) -> bool:
    done = subprocess.run(["qemu-io", "-f", fmt, "-c", command, target], capture_output=True, text=True, timeout=60)
    return done.returncode == 0 and "verification failed" not in done.stdout + done.stderr


def _simulated(tmp_path: Path) -> tuple[Callable[[str], None], object]:
    hv = open_simulated(HV, tmp_path)

    def add_domain(name: str) -> None:
        uuid = f"00000000-0000-4000-8000-{abs(hash(name)) % (1 << 48):012x}"
        hv.conn.defineXML(domain_xml(DomainSpec(name=name, uuid=uuid, vcpus=1, memory_mib=64))).create()

    return add_domain, hv


def _fake_host() -> Host:
    fake = FakeVolumes(HV, backends=("local",))
    fake.images[IMAGE.image_id] = (2 * MIB, bytes([0x3C]) * 65536)

    def write(volume_id: int, pattern: int, offset: int) -> None:
        key = ("local", volume_id)
        content = bytearray(fake.content[key].ljust(offset + 65536, b"\0"))
        content[offset:offset + 65536] = bytes([pattern]) * 65536
        fake.content[key] = bytes(content)

    def holds(volume_id: int, pattern: int, offset: int) -> bool:
        return fake.content[("local", volume_id)][offset:offset + 65536] == bytes([pattern]) * 65536

    return Host(fake, "local", False, fake.add_domain, write, holds)


@pytest.fixture(params=["fake", "local", "rbd"])
def host(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Host]:
    if request.param == "fake":
        yield _fake_host()
        return
    add_domain, hv = _simulated(tmp_path)
    if request.param == "local":
        store = LocalStore(HV, tmp_path / "volumes")

        def io(volume_id: int, command: str) -> bool:
            return _qemu_io(store.path(volume_id), "qcow2", command)

        image = _image_file(tmp_path)
        volumes = Volumes(HV, hv.conn, {"local": store}, images=lambda _source: image)  # type: ignore[attr-defined]
        yield Host(volumes, "local", False, add_domain,
                   lambda v, p, o: _check(io(v, f"write -P {p} {o} 64k")), lambda v, p, o: io(v, f"read -P {p} {o} 64k"))
    else:
        ceph: CephCluster = request.getfixturevalue("ceph_cluster")
        # A backend name per test: volume ids restart at 1 in every test, the pool is the session's.
        name = f"ceph{abs(hash(request.node.nodeid)) % 10**8}"
        rbd = RbdStore(HV, RbdConfig(name=name, pool=POOL, monitors=ceph.monitors, user=USER,
                                     keyring=ceph.keyring, prefix=f"{name}-"), conn=hv.conn)  # type: ignore[attr-defined]

        def io(volume_id: int, command: str) -> bool:
            target = f"rbd:{rbd._image(volume_id)}:id={USER}:keyring={ceph.keyring}:conf={ceph.client_conf}"
            return _qemu_io(target, "raw", command)

        image = _image_file(tmp_path)
        volumes = Volumes(HV, hv.conn, {name: rbd}, images=lambda _source: image)  # type: ignore[attr-defined]
        yield Host(volumes, name, True, add_domain,
                   lambda v, p, o: _check(io(v, f"write -P {p} {o} 64k")), lambda v, p, o: io(v, f"read -P {p} {o} 64k"))
    hv.close()  # type: ignore[attr-defined]


def _check(ok: bool) -> None:
    assert ok, "qemu-io write failed"


# -- volumes ------------------------------------------------------------------------------------


def test_create_is_idempotent_and_whole_mib(host: Host) -> None:
    first = host.volumes.create(host.ref(1), 5 * MIB + 1)
    assert (first.size_bytes, first.created) == (6 * MIB, True)
    again = host.volumes.create(host.ref(1), 9 * MIB)  # a replay: the volume as it is
    assert (again.size_bytes, again.created, again.path) == (6 * MIB, False, first.path)


@pytest.mark.parametrize("size", [0, (64 << 40) + 1])
def test_create_refuses_a_size_out_of_range(host: Host, size: int) -> None:
    with pytest.raises(InvalidRequest, match="size_bytes"):
        host.volumes.create(host.ref(1), size)


def test_an_unknown_backend_or_id_is_refused_before_any_work(host: Host) -> None:
    with pytest.raises(InvalidRequest, match="backend 'nowhere' is not configured"):
        host.volumes.create(spb.VolumeRef(id=1, backend="nowhere"), MIB)
    with pytest.raises(InvalidRequest, match="volume.id"):
        host.volumes.create(host.ref(0), MIB)


def test_a_volume_from_an_image_has_its_content_and_the_size_asked(host: Host) -> None:
    made = host.volumes.create(host.ref(1), 4 * MIB, IMAGE)
    assert (made.size_bytes, made.created) == (4 * MIB, True)
    assert host.holds(1, 0x3C, 0)
    assert host.volumes.create(host.ref(1), 4 * MIB, IMAGE).created is False
    with pytest.raises(VolumeError, match="image 7 needs 2097152 bytes: volume 2 of 1048576 is too small"):
        host.volumes.create(host.ref(2), MIB, IMAGE)
    assert host.volumes.delete(host.ref(2)).deleted is False  # nothing was left of it


def test_extend_grows_never_shrinks(host: Host) -> None:
    host.volumes.create(host.ref(1), 4 * MIB)
    host.write(1, 0x11, 0)
    assert host.volumes.extend(host.ref(1), 8 * MIB).size_bytes == 8 * MIB
    assert host.volumes.extend(host.ref(1), 8 * MIB).size_bytes == 8 * MIB  # replay: nothing changes
    with pytest.raises(InvalidRequest, match="never shrink"):
        host.volumes.extend(host.ref(1), 4 * MIB)
    assert host.holds(1, 0x11, 0)
    with pytest.raises(VolumeNotFound, match="volume 2 not found"):
        host.volumes.extend(host.ref(2), 8 * MIB)


def test_a_volume_from_a_snapshot_has_the_old_content(host: Host) -> None:
    host.volumes.create(host.ref(1), 4 * MIB)
    host.write(1, 0x5A, 0)
    taken = host.volumes.snapshot(host.ref(1), 10)
    assert (taken.size_bytes, taken.created) == (4 * MIB, True)
    assert host.volumes.snapshot(host.ref(1), 10).created is False
    host.write(1, 0x77, 0)  # written after the snapshot: not in the clone
    clone = host.volumes.clone(host.ref(2), host.ref(1), 10, 8 * MIB)
    assert (clone.size_bytes, clone.created) == (8 * MIB, True)
    assert host.holds(2, 0x5A, 0) and not host.holds(2, 0x77, 0)
    assert host.holds(1, 0x77, 0)
    assert host.volumes.clone(host.ref(2), host.ref(1), 10, 0).created is False
    # Standalone: the snapshot and its volume go, the clone keeps its bytes.
    assert host.volumes.snapshot_delete(host.ref(1), 10).deleted is True
    assert host.volumes.delete(host.ref(1)).deleted is True
    assert host.holds(2, 0x5A, 0)


def test_a_clone_of_a_missing_snapshot_is_not_found(host: Host) -> None:
    host.volumes.create(host.ref(1), MIB)
    with pytest.raises(VolumeNotFound, match="snapshot 3 of volume 1 not found"):
        host.volumes.clone(host.ref(2), host.ref(1), 3, 0)


def test_delete_refuses_a_snapshotted_volume_and_is_idempotent(host: Host) -> None:
    host.volumes.create(host.ref(1), MIB)
    host.volumes.snapshot(host.ref(1), 5)
    with pytest.raises(VolumeBusy, match="has snapshots 5"):
        host.volumes.delete(host.ref(1))
    assert host.volumes.snapshot_delete(host.ref(1), 5).deleted is True
    assert host.volumes.snapshot_delete(host.ref(1), 5).deleted is False
    assert host.volumes.delete(host.ref(1)).deleted is True
    assert host.volumes.delete(host.ref(1)).deleted is False
    with pytest.raises(VolumeNotFound):
        host.volumes.extend(host.ref(1), 2 * MIB)


# -- attachments ------------------------------------------------------------------------------


def test_attach_and_detach_by_attachment_id(host: Host) -> None:
    host.add_domain("cl-web")
    host.volumes.create(host.ref(1), MIB)
    assert host.volumes.attach(host.ref(1), "cl-web", "vdb", 7).attached is True
    assert host.volumes.attach(host.ref(1), "cl-web", "vdb", 7).attached is False  # replay
    [disk] = [d for d in host.volumes.disks("cl-web") if d.attachment_id]
    assert (disk.device, disk.volume_id, disk.attachment_id) == ("vdb", 1, 7)
    with pytest.raises(VolumeBusy, match="in use by domain cl-web"):
        host.volumes.delete(host.ref(1))
    assert host.volumes.detach(host.ref(1), "cl-web", 7).detached is True
    assert host.volumes.detach(host.ref(1), "cl-web", 7).detached is False  # twice: a no-op success
    assert [d for d in host.volumes.disks("cl-web") if d.attachment_id] == []
    assert host.volumes.delete(host.ref(1)).deleted is True


def test_a_boot_disk_is_vda_of_its_attachment_on_the_volume(host: Host) -> None:
    """vm.create's boot volume: the disk a domain is defined with, read back as vda of the
    attachment, on the volume's own source; a missing volume is not found, an id of 0 refused."""
    made = host.volumes.create(host.ref(1), MIB)
    xml = host.volumes.boot_disk(host.ref(1), 9)
    [disk] = disks_of(f"<domain><devices>{xml}</devices></domain>")
    assert (disk.device, disk.volume_id, disk.attachment_id, disk.source) == ("vda", 1, 9, made.path)
    with pytest.raises(VolumeNotFound, match="boot volume 2 not found"):
        host.volumes.boot_disk(host.ref(2), 9)
    with pytest.raises(InvalidRequest, match="attachment_id"):
        host.volumes.boot_disk(host.ref(1), 0)


def test_a_stale_detach_never_removes_a_newer_attachment(host: Host) -> None:
    host.add_domain("cl-web")
    host.volumes.create(host.ref(1), MIB)
    host.volumes.attach(host.ref(1), "cl-web", "vdb", 7)
    host.volumes.detach(host.ref(1), "cl-web", 7)
    host.volumes.attach(host.ref(1), "cl-web", "vdb", 8)  # the same volume and device, a newer attachment
    assert host.volumes.detach(host.ref(1), "cl-web", 7).detached is False  # the old detach, replayed late
    assert [d.attachment_id for d in host.volumes.disks("cl-web") if d.attachment_id] == [8]


def test_a_taken_device_is_a_clash(host: Host) -> None:
    host.add_domain("cl-web")
    host.volumes.create(host.ref(1), MIB)
    host.volumes.create(host.ref(2), MIB)
    host.volumes.attach(host.ref(1), "cl-web", "vdc", 7)
    with pytest.raises(VolumeBusy, match="device vdc of domain cl-web holds"):
        host.volumes.attach(host.ref(2), "cl-web", "vdc", 8)
    with pytest.raises(InvalidRequest, match="vda is the root disk's"):
        host.volumes.attach(host.ref(2), "cl-web", "vda", 8)  # the root disk's name is never given


def test_attach_names_what_is_missing(host: Host) -> None:
    host.add_domain("cl-web")
    with pytest.raises(VolumeNotFound, match="volume 1 not found"):
        host.volumes.attach(host.ref(1), "cl-web", "vdb", 7)
    host.volumes.create(host.ref(1), MIB)
    with pytest.raises(VolumeNotFound, match="domain cl-gone not found"):
        host.volumes.attach(host.ref(1), "cl-gone", "vdb", 7)
    assert host.volumes.detach(host.ref(1), "cl-gone", 7).detached is False


def test_snapshot_under_a_running_guest(host: Host) -> None:
    """rbd snapshots are atomic (crash-consistent); a local qcow2 is refused while a guest runs on it."""
    host.add_domain("cl-web")
    host.volumes.create(host.ref(1), MIB)
    host.volumes.attach(host.ref(1), "cl-web", "vdb", 7)
    if host.live_snapshots:
        assert host.volumes.snapshot(host.ref(1), 3).created is True
    else:
        with pytest.raises(VolumeBusy, match="in use by running domain cl-web"):
            host.volumes.snapshot(host.ref(1), 3)


def test_concurrent_verbs_on_one_volume_are_serialised(host: Host) -> None:
    host.volumes.create(host.ref(1), MIB)
    sizes = [2 * MIB * (i + 1) for i in range(6)]
    errors: list[Exception] = []

    def grow(size: int) -> None:
        try:
            host.volumes.extend(host.ref(1), size)
        except InvalidRequest:
            pass  # a larger extend ran first: this one would shrink, and is refused
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=grow, args=(s,)) for s in sizes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert host.volumes.extend(host.ref(1), max(sizes)).size_bytes == max(sizes)


def test_the_fake_records_calls_and_fails_on_demand() -> None:
    fake = FakeVolumes(HV)
    fake.fail_next("create", VolumeError(HV, "disk full"))
    with pytest.raises(VolumeError, match="disk full"):
        fake.create(spb.VolumeRef(id=1, backend="local"), MIB)
    assert fake.create(spb.VolumeRef(id=1, backend="local"), MIB).created is True
    assert [verb for verb, _ in fake.calls] == ["create", "create"]
