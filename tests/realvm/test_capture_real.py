"""Capture on a real hypervisor: API -> tree -> agent -> qemu-img -> upload back to the API.

A guest writes a marker into its disk through its console, is stopped (ACPI) and captured
into a new image through ``POST /instances/{id}/capture``. A second VM booted from that
image reads the marker back from its own disk: the capture holds the first VM's writes,
not just the image it was made from. The copy stays in the hypervisor's image cache, so
the second VM downloads nothing.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from cloudland_launcher.harness import wait_for
from tests.integration.cloud import Cloud
# (QemuSession through this module: it registers qemu_host for assertion rewriting first)
from tests.realvm.test_api_to_qemu import (BOOT_TIMEOUT_S, READY, QemuSession, console_until, facts, job_ended,
                                           ready, real_cloud, running_vm, type_until)

pytest_plugins = ["tests.realvm.qemu_host"]
pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.realvm]
__all__ = ["real_cloud"]  # a fixture of this module too

MARKER_OFFSET_MIB = 512  # past the guest's boot partition, inside its 1 GiB disk


def test_a_captured_vm_boots_again_with_its_writes(real_cloud: Cloud, qemu_libvirt: QemuSession) -> None:
    cloud = real_cloud
    ready(cloud, qemu_libvirt.guest)
    src = running_vm(cloud, "src")
    console_until(cloud, src["id"], "/ # ", BOOT_TIMEOUT_S)
    type_until(cloud, src["id"], f"echo cl-capture-$((6*7)) | dd of=/dev/vda bs=1M seek={MARKER_OFFSET_MIB} "
                                 "conv=fsync 2>/dev/null && echo written-$((2*3))", b"written-6")

    # Running: refused. Stopped (ACPI): captured.
    assert cloud.http is not None
    refused = cloud.http.post(f"/instances/{src['id']}/capture", json={"name": "golden"})
    assert refused.status_code == 409 and "stop it first" in refused.text, refused.text
    assert job_ended(cloud, cloud.post(f"/instances/{src['id']}/stop"))["state"] == "succeeded"
    accepted = cloud.post(f"/instances/{src['id']}/capture", {"name": "golden"})
    assert accepted["image"]["status"] == "saving"
    job = job_ended(cloud, accepted["job"], timeout=600)
    assert job["state"] == "succeeded", job
    golden = cloud.get(f"/images/{accepted['image']['id']}")
    assert golden["status"] == "active" and golden["size_bytes"] > 0, golden
    assert cloud.get(f"/instances/{src['id']}")["status"] == "stopped"
    # A standalone qcow2 (no backing file), kept by the API and by the hypervisor's cache.
    api_copy = cloud.state_dir / "images" / f"{golden['id']}.qcow2"
    info = subprocess.run(["qemu-img", "info", "--output=json", str(api_copy)], capture_output=True, text=True,
                          check=True).stdout
    assert '"format": "qcow2"' in info and "backing-filename" not in info, info
    cached = cloud.tree.state_dir / "image-cache" / f"{golden['sha256']}.qcow2"
    assert cached.read_bytes() == api_copy.read_bytes()

    clone = running_vm(cloud, "clone", "golden")
    seen = facts(console_until(cloud, clone["id"], READY, BOOT_TIMEOUT_S))
    assert seen["hostname"] == "clone", seen  # its own config drive, not the source's
    type_until(cloud, clone["id"], f"dd if=/dev/vda bs=1M skip={MARKER_OFFSET_MIB} count=1 2>/dev/null "
                                   "| head -c 13; echo", b"cl-capture-42")
    assert f"GET /api/v1/images/{golden['id']}/download" not in cloud.log()  # booted from the cached copy

    for vm in (src, clone):
        deleted: dict[str, Any] = cloud.request("DELETE", f"/instances/{vm['id']}")
        assert job_ended(cloud, deleted)["state"] == "succeeded"
    assert cloud.http.delete(f"/images/{golden['id']}").status_code == 204
    wait_for(lambda: not cached.exists(), 30, "the hypervisor to evict the deleted image")
