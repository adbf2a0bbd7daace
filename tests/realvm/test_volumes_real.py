"""Volumes on the real hypervisor (issue 13, must-show 1): API -> tree -> agent -> qemu-img and
libvirt -> QEMU.

A guest writes a marker to an attached ``local`` volume (a qcow2 file in a libvirt ``dir`` pool);
the volume is detached and attached to a second guest, which reads the marker back on its serial
console, through the API. The guests see the volume as ``vdb`` with the serial
``cl-vol-<id>``. Attach and detach happen while the guests are stopped (the disk goes into and
out of the persistent definition; hot-plug into a running guest is the driver's other path).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from cloudland_agents.storage.rbd import RbdStore, forget_secret
from tests.integration.cloud import Cloud
from tests.realvm.test_api_to_qemu import (BOOT_TIMEOUT_S, QemuSession, console_until, job_ended, ready,
                                           real_cloud, running_vm, type_until)
from tests.storage.ceph import POOL, USER, CephCluster, ceph_missing

pytest_plugins = ["tests.realvm.qemu_host"]
pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.realvm]
__all__ = ["real_cloud"]  # a fixture of this module too

PROMPT = "/ # "


def ok(cloud: Cloud, accepted: dict[str, Any], timeout: float = 180) -> None:
    job = job_ended(cloud, accepted.get("job", accepted), timeout)
    assert job["state"] == "succeeded", job


def power(cloud: Cloud, vm: dict[str, Any], action: str) -> None:
    ok(cloud, cloud.post(f"/instances/{vm['id']}/{action}"))


def guest_and_volume(cloud: Cloud, session: QemuSession, vm_name: str, volume_name: str) -> tuple[dict[str, Any],
                                                                                                  dict[str, Any]]:
    """A running guest ``vm_name`` at its shell prompt and a new 1-GiB local volume beside it."""
    ready(cloud, session.guest)
    vm = running_vm(cloud, vm_name)
    console_until(cloud, vm["id"], PROMPT, BOOT_TIMEOUT_S)
    made = cloud.post("/volumes", {"name": volume_name, "size_gib": 1, "instance": vm["id"]})
    ok(cloud, made)
    return vm, made["volume"]


@pytest.fixture
def no_pool_left(real_cloud: Cloud, qemu_libvirt: QemuSession) -> Iterator[None]:
    """The agent's libvirt pools over this test's directories go with the test (the daemon is shared)."""
    yield
    for pool in qemu_libvirt.conn.listAllStoragePools():
        try:
            if str(real_cloud.tree.state_dir) in pool.XMLDesc(0):
                pool.destroy()
        except libvirt.libvirtError:
            pass


def test_a_marker_written_by_one_guest_is_read_by_another(real_cloud: Cloud, qemu_libvirt: QemuSession,
                                                          no_pool_left: None) -> None:
    cloud = real_cloud
    ready(cloud, qemu_libvirt.guest)
    src = running_vm(cloud, "writer")
    console_until(cloud, src["id"], PROMPT, BOOT_TIMEOUT_S)
    power(cloud, src, "stop")

    made = cloud.post("/volumes", {"name": "shared", "size_gib": 1, "instance": src["id"]})
    ok(cloud, made)
    volume = made["volume"]
    files = list(cloud.tree.state_dir.rglob(f"volumes/hv*/vol-{volume['id']}.qcow2"))
    assert len(files) == 1, files
    pools = [p for p in qemu_libvirt.conn.listAllStoragePools() if str(files[0].parent) in p.XMLDesc(0)]
    assert len(pools) == 1 and f"vol-{volume['id']}.qcow2" in pools[0].listVolumes()

    ok(cloud, cloud.post(f"/volumes/{volume['id']}/attachments", {"instance": src["id"]}))
    power(cloud, src, "start")
    console_until(cloud, src["id"], PROMPT, BOOT_TIMEOUT_S)
    # (the console log may still show the last boot's prompt: the first command waits for this boot)
    type_until(cloud, src["id"], "cat /sys/block/vdb/serial; echo", f"cl-vol-{volume['id']}".encode(),
               BOOT_TIMEOUT_S)
    type_until(cloud, src["id"], "echo cl-volume-$((6*7)) | dd of=/dev/vdb bs=512 count=1 conv=fsync "
                                 "2>/dev/null && echo written-$((2*3))", b"written-6")
    power(cloud, src, "stop")
    attachment = cloud.get(f"/volumes/{volume['id']}")["attachment"]
    ok(cloud, cloud.request("DELETE", f"/volumes/{volume['id']}/attachments/{attachment['id']}"))
    src_domain = qemu_libvirt.conn.lookupByName(f"cl-{src['uuid']}")
    assert str(files[0]) not in src_domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)

    dst = running_vm(cloud, "reader")
    console_until(cloud, dst["id"], PROMPT, BOOT_TIMEOUT_S)
    power(cloud, dst, "stop")
    ok(cloud, cloud.post(f"/volumes/{volume['id']}/attachments", {"instance": dst["id"]}))
    power(cloud, dst, "start")
    console_until(cloud, dst["id"], PROMPT, BOOT_TIMEOUT_S)
    type_until(cloud, dst["id"], "dd if=/dev/vdb bs=16 count=1 2>/dev/null; echo", b"cl-volume-42", BOOT_TIMEOUT_S)


def test_hot_plug_live_extend_and_unplug_in_a_running_guest(real_cloud: Cloud, qemu_libvirt: QemuSession,
                                                           no_pool_left: None) -> None:
    """Must-show 3 with the live path: attached to a running guest it appears at once, grown it
    shows the new size without a reboot (QEMU's block_resize), detached it is gone."""
    cloud = real_cloud
    vm, volume = guest_and_volume(cloud, qemu_libvirt, "live", "hot")
    ok(cloud, cloud.post(f"/volumes/{volume['id']}/attachments", {"instance": vm["id"]}))
    type_until(cloud, vm["id"], "cat /sys/block/vdb/serial; echo", f"cl-vol-{volume['id']}".encode())
    type_until(cloud, vm["id"], "echo size-$(cat /sys/block/vdb/size)", b"size-2097152")  # 1 GiB in sectors
    ok(cloud, cloud.post(f"/volumes/{volume['id']}/extend", {"size_gib": 2}))
    type_until(cloud, vm["id"], "echo size-$(cat /sys/block/vdb/size)", b"size-4194304")  # 2 GiB, no reboot
    attachment = cloud.get(f"/volumes/{volume['id']}")["attachment"]
    ok(cloud, cloud.request("DELETE", f"/volumes/{volume['id']}/attachments/{attachment['id']}"))
    type_until(cloud, vm["id"], "test -e /sys/block/vdb || echo gone-$((1+1))", b"gone-2")


@pytest.fixture
def rbd_backend(qemu_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A throwaway Ceph, the hosts' CLOUDLAND_RBD_BACKENDS naming its pool, and a volume type
    ``ceph`` for it in the API (requested before ``real_cloud``, which starts both with this
    environment). The libvirt secret the agent defines for it goes at the end (the daemon is shared)."""
    reason = ceph_missing()
    if reason is not None:
        pytest.skip(reason)
    ceph = CephCluster()
    name = f"ceph{uuid.uuid4().hex[:8]}"  # the secret's usage is per backend: sessions never share one
    try:
        ceph.start()
        config = qemu_dir / "rbd-backends.json"
        config.write_text(json.dumps([{"name": name, "pool": POOL, "user": USER, "keyring": str(ceph.keyring),
                                       "monitors": [f"{h}:{p}" for h, p in ceph.monitors]}]))
        monkeypatch.setenv("CLOUDLAND_RBD_BACKENDS", str(config))
        monkeypatch.setenv("CLOUDLAND_API_VOLUME_TYPES", f"local=local,ceph={name}")
        yield name
    finally:
        conn = libvirt.open("qemu:///system")
        try:
            forget_secret(conn, RbdStore.secret_uuid_of(name, USER))
        finally:
            conn.close()
        ceph.stop()


def test_an_rbd_volume_written_by_one_guest_is_read_by_another(
        rbd_backend: str, real_cloud: Cloud, qemu_libvirt: QemuSession, no_pool_left: None) -> None:
    """Must-show 2 on one hypervisor: QEMU opens the RBD image through librbd, with the cephx key
    libvirt holds as a secret; a marker written by one guest is read by a second one."""
    cloud = real_cloud
    ready(cloud, qemu_libvirt.guest)
    src = running_vm(cloud, "rbd-writer")
    console_until(cloud, src["id"], PROMPT, BOOT_TIMEOUT_S)
    made = cloud.post("/volumes", {"name": "net", "size_gib": 1, "type": "ceph"})
    ok(cloud, made)
    volume = made["volume"]
    assert (volume["backend"], volume["hypervisor_id"]) == (rbd_backend, None)
    ok(cloud, cloud.post(f"/volumes/{volume['id']}/attachments", {"instance": src["id"]}))
    domain = qemu_libvirt.conn.lookupByName(f"cl-{src['uuid']}")
    assert "protocol='rbd'" in domain.XMLDesc(0) and "<secret type='ceph'" in domain.XMLDesc(0)
    type_until(cloud, src["id"], "cat /sys/block/vdb/serial; echo", f"cl-vol-{volume['id']}".encode())
    type_until(cloud, src["id"], "echo cl-rbd-$((6*7)) | dd of=/dev/vdb bs=512 count=1 conv=fsync "
                                 "2>/dev/null && echo written-$((2*3))", b"written-6")
    attachment = cloud.get(f"/volumes/{volume['id']}")["attachment"]
    ok(cloud, cloud.request("DELETE", f"/volumes/{volume['id']}/attachments/{attachment['id']}"))

    dst = running_vm(cloud, "rbd-reader")
    console_until(cloud, dst["id"], PROMPT, BOOT_TIMEOUT_S)
    ok(cloud, cloud.post(f"/volumes/{volume['id']}/attachments", {"instance": dst["id"]}))
    type_until(cloud, dst["id"], "dd if=/dev/vdb bs=13 count=1 2>/dev/null; echo", b"cl-rbd-42")
