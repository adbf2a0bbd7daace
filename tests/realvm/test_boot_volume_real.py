"""Boot from volume and snapshots, through QEMU guests on the real hypervisor (issue 13,
must-shows 5 and 4): API -> tree -> agent -> qemu-img and libvirt -> QEMU (TCG).

Must-show 5: a ``local`` volume made from the test guest's bootable disk is a VM's root disk
(vda: SeaBIOS boots it); the guest writes a marker past the disk's partition, the VM is
deleted and the volume stays; a second VM boots from the same volume and reads the marker, on
its serial console through the API.

Must-show 4: a guest writes a marker to a hot-plugged volume; the volume, unplugged, is
snapshotted; plugged again the guest overwrites the marker; a volume made from the snapshot,
plugged into the same guest, holds the old marker while the volume has the new one. The guest
finds each volume by its serial (``cl-vol-<id>`` in /sys/block/vd*/serial), not by device order.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.integration.cloud import Cloud
from tests.realvm.test_api_to_qemu import BOOT_TIMEOUT_S, console_until, facts, ready, type_until
from tests.realvm.qemu_host import READY, QemuSession  # noqa: I001 (after test_api_to_qemu: its rewrite)
from tests.realvm.test_volumes_real import guest_and_volume, no_pool_left, ok, rbd_backend, real_cloud

pytest_plugins = ["tests.realvm.qemu_host"]
pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.realvm]
__all__ = ["no_pool_left", "rbd_backend", "real_cloud"]  # fixtures of this module too

MARK_SECTOR = 1 << 20  # 512 MiB into the 1-GiB volume: past the guest disk's 32-MiB partition


def deleted_with_its_vm(cloud: Cloud, vm: dict[str, Any], volume: dict[str, Any]) -> None:
    """Delete ``vm``; its delete-on-termination boot volume goes within 120 s."""
    ok(cloud, {"job": cloud.request("DELETE", f"/instances/{vm['id']}")})
    assert cloud.http is not None
    deadline = time.monotonic() + 120
    while cloud.http.get(f"/volumes/{volume['id']}").status_code != 404:
        assert time.monotonic() < deadline, cloud.get(f"/volumes/{volume['id']}")
        time.sleep(0.5)


def test_a_vm_boots_from_a_volume_and_a_second_vm_boots_from_it_with_the_data(
        real_cloud: Cloud, qemu_libvirt: QemuSession, no_pool_left: None) -> None:
    cloud = real_cloud
    ready(cloud, qemu_libvirt.guest)
    made = cloud.post("/volumes", {"name": "root", "size_gib": 1, "image": "guest"})
    ok(cloud, made)
    volume = made["volume"]

    def boot(name: str) -> dict[str, Any]:
        [vm] = cloud.post("/instances", {"name": name, "flavor": "tiny", "boot_volume": "root"})["instances"]
        ok(cloud, {"job": {"id": vm["job_id"]}})
        vm = cloud.get(f"/instances/{vm['id']}")
        assert (vm["status"], vm["image_id"]) == ("running", None), vm
        domain = qemu_libvirt.conn.lookupByName(f"cl-{vm['uuid']}")
        assert f"vol-{volume['id']}.qcow2" in domain.XMLDesc(0)  # its root disk is the volume's file
        seen = facts(console_until(cloud, vm["id"], READY, BOOT_TIMEOUT_S))
        assert seen["hostname"] == name, seen  # its own config drive beside the volume
        return vm

    first = boot("bfv-first")
    type_until(cloud, first["id"], "cat /sys/block/vda/serial; echo", f"cl-vol-{volume['id']}".encode(),
               BOOT_TIMEOUT_S)
    type_until(cloud, first["id"], f"echo cl-boot-$((6*7)) | dd of=/dev/vda bs=512 seek={MARK_SECTOR} count=1 "
                                   "conv=fsync 2>/dev/null && echo written-$((2*3))", b"written-6")
    ok(cloud, {"job": cloud.request("DELETE", f"/instances/{first['id']}")})
    kept = cloud.get(f"/volumes/{volume['id']}")
    assert (kept["status"], kept["attachment"]) == ("available", None), kept

    second = boot("bfv-second")
    type_until(cloud, second["id"], f"dd if=/dev/vda bs=512 skip={MARK_SECTOR} count=1 2>/dev/null | head -c 10; "
                                    "echo", b"cl-boot-42", BOOT_TIMEOUT_S)


def test_a_vm_boots_from_an_rbd_volume_and_takes_it_along_when_asked(
        rbd_backend: str, real_cloud: Cloud, qemu_libvirt: QemuSession, no_pool_left: None) -> None:
    """The root disk on Ceph: QEMU's librbd opens the volume (the key in a libvirt secret) as vda,
    SeaBIOS boots it; the VM made with delete_on_termination takes the volume with it."""
    cloud = real_cloud
    ready(cloud, qemu_libvirt.guest)
    made = cloud.post("/volumes", {"name": "rbd-root", "size_gib": 1, "image": "guest", "type": "ceph"})
    ok(cloud, made)
    volume = made["volume"]
    [vm] = cloud.post("/instances", {"name": "bfv-rbd", "flavor": "tiny", "boot_volume": "rbd-root",
                                     "delete_on_termination": True})["instances"]
    ok(cloud, {"job": {"id": vm["job_id"]}})
    vm = cloud.get(f"/instances/{vm['id']}")
    xml = qemu_libvirt.conn.lookupByName(f"cl-{vm['uuid']}").XMLDesc(0)
    assert "protocol='rbd'" in xml and f"vol-{volume['id']}" in xml and "<secret type='ceph'" in xml
    assert facts(console_until(cloud, vm["id"], READY, BOOT_TIMEOUT_S))["hostname"] == "bfv-rbd"
    type_until(cloud, vm["id"], "cat /sys/block/vda/serial; echo", f"cl-vol-{volume['id']}".encode(), BOOT_TIMEOUT_S)
    deleted_with_its_vm(cloud, vm, volume)


def test_a_vm_from_an_image_onto_a_new_volume_in_one_create(
        real_cloud: Cloud, qemu_libvirt: QemuSession, no_pool_left: None) -> None:
    """Issue 13's last slice: one create (``new_boot_volume``) makes the volume from the test
    guest's image in the VM's create job and boots the guest from it (vda is the volume's file,
    its serial the volume's); the guest prints a marker on its console; the VM's delete takes
    the volume with it (delete_on_termination)."""
    cloud = real_cloud
    ready(cloud, qemu_libvirt.guest)
    [vm] = cloud.post("/instances", {"name": "bfv-new", "flavor": "tiny", "image": "guest",
                                     "new_boot_volume": {"size_gib": 1},
                                     "delete_on_termination": True})["instances"]
    ok(cloud, {"job": {"id": vm["job_id"]}})
    vm = cloud.get(f"/instances/{vm['id']}")
    volume = cloud.get(f"/volumes/{vm['boot_volume_id']}")
    assert (volume["name"], volume["status"], volume["hypervisor_id"]) == ("bfv-new-boot", "available",
                                                                          vm["hypervisor_id"]), volume
    [file] = cloud.tree.state_dir.rglob(f"volumes/hv*/vol-{volume['id']}.qcow2")
    assert f"vol-{volume['id']}.qcow2" in qemu_libvirt.conn.lookupByName(f"cl-{vm['uuid']}").XMLDesc(0)
    assert facts(console_until(cloud, vm["id"], READY, BOOT_TIMEOUT_S))["hostname"] == "bfv-new"
    type_until(cloud, vm["id"], "echo new-root-$(cat /sys/block/vda/serial)-$((6*7))",
               f"new-root-cl-vol-{volume['id']}-42".encode(), BOOT_TIMEOUT_S)
    deleted_with_its_vm(cloud, vm, volume)
    assert not file.exists()


def _on(serial_of: int, command: str) -> str:
    """A shell line running ``command`` with $d set to the guest's disk of volume ``serial_of``."""
    return f"d=/dev/$(grep -l '^cl-vol-{serial_of}$' /sys/block/vd*/serial | cut -d/ -f4); {command}"


def test_a_volume_from_a_snapshot_has_what_a_guest_wrote_before_it(
        real_cloud: Cloud, qemu_libvirt: QemuSession, no_pool_left: None) -> None:
    cloud = real_cloud
    vm, volume = guest_and_volume(cloud, qemu_libvirt, "snapper", "data")
    data = volume["id"]

    # The console read through the API starts at the log's beginning: every awaited answer is new.
    def plug(volume_id: int, step: str) -> None:
        ok(cloud, cloud.post(f"/volumes/{volume_id}/attachments", {"instance": vm["id"]}))
        type_until(cloud, vm["id"], _on(volume_id, f"echo plugged-{step}-${{d#/dev/}}"), f"plugged-{step}-vd".encode())

    def write(marker: str) -> None:
        type_until(cloud, vm["id"], _on(data, f"echo cl-{marker}-$((6*7)) | dd of=$d bs=512 count=1 conv=fsync "
                                              f"2>/dev/null && echo written-{marker}-$((2*3))"),
                   f"written-{marker}-6".encode())

    plug(data, "first")
    write("old")
    attachment = cloud.get(f"/volumes/{data}")["attachment"]
    ok(cloud, cloud.request("DELETE", f"/volumes/{data}/attachments/{attachment['id']}"))  # a live unplug
    snap = cloud.post(f"/volumes/{data}/snapshots", {"name": "before"})
    ok(cloud, snap)
    plug(data, "again")
    write("new")

    copy = cloud.post("/volumes", {"name": "from-before", "snapshot": "before"})
    ok(cloud, copy)
    copy_id = copy["volume"]["id"]
    plug(copy_id, "copy")
    type_until(cloud, vm["id"], _on(copy_id, "echo copy-$(dd if=$d bs=9 count=1 2>/dev/null)"), b"copy-cl-old-42")
    type_until(cloud, vm["id"], _on(data, "echo data-$(dd if=$d bs=9 count=1 2>/dev/null)"), b"data-cl-new-42")
