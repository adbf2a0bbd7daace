"""The image cache under real QEMU: two VMs on overlays of one cached image, then a capture.

QEMU (TCG, through libvirtd and qemu:///system) must open each VM's whole backing chain, as
the user libvirt-qemu, or the domain does not start; the unit tests never get that far. The
disks hold no OS: SeaBIOS finds nothing to boot and the VM idles, running, which is all that
is needed here. libvirtd comes from the session fixture ``qemu_libvirt`` (tests/realvm/qemu_host.py).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from cloudland_agents.compute.driver import Disk, DomainSpec, LibvirtCompute
from cloudland_agents.images.cache import ImageCache, ImageError
from cloudland_agents.images.source import ImageSource
from tests.unit.test_image_cache import TOKEN, Server, info, qemu_io

pytest.register_assert_rewrite("tests.realvm.qemu_host")  # before the import: it is a plugin too
from tests.realvm.qemu_host import QemuSession  # noqa: E402

pytest_plugins = ["tests.realvm.qemu_host"]
pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.realvm]

HYPERVISOR = 1


def test_two_vms_on_one_cached_image_then_capture(qemu_libvirt: QemuSession, qemu_dir: Path) -> None:
    served = qemu_dir / "served"
    served.mkdir()
    image = served / "1.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True, timeout=30)
    qemu_io(image, "qcow2", "write -P 0xcd 0 1M")
    data = image.read_bytes()
    server = Server(served)
    server.thread.start()
    compute = LibvirtCompute(qemu_libvirt.conn, HYPERVISOR)
    names = [f"cl-images-{uuid.uuid4().hex[:8]}-{i}" for i in (1, 2)]
    try:
        source = ImageSource(1, hashlib.sha256(data).hexdigest(), len(data), "qcow2",
                             f"{server.url}/1.qcow2", TOKEN)
        cache = ImageCache(qemu_dir / "cache", HYPERVISOR)
        overlays = []
        for name in names:
            overlay = cache.create_overlay(cache.base(source), qemu_dir / f"{name}.qcow2", size_gib=1)
            overlays.append(overlay)
            spec = DomainSpec(name, str(uuid.uuid4()), vcpus=1, memory_mib=64, domain_type="qemu",
                              disks=(Disk(str(overlay)),))
            qemu_libvirt.made.add((spec.name, spec.uuid))  # the session checks that none is left
            assert compute.create(spec)["created"] is True
        assert [compute.get(name)["state"] for name in names] == ["running", "running"]
        assert cache.downloads == 1 and server.hits["/1.qcow2"] == 1
        assert os.listdir(cache.root) == [f"{source.sha256}.qcow2"]

        # A running VM holds QEMU's write lock on its overlay: no capture of a live disk.
        with pytest.raises(ImageError, match=r"capture of .* failed: .*lock"):
            cache.capture(overlays[0], qemu_dir / "live.qcow2")
        compute.stop(names[0], force=True)
        size, digest = cache.capture(overlays[0], qemu_dir / "captured.qcow2")
        captured = qemu_dir / "captured.qcow2"
        assert (size, digest) == (captured.stat().st_size, hashlib.sha256(captured.read_bytes()).hexdigest())
        assert "backing-filename" not in info(captured)
        qemu_io(captured, "qcow2", "read -P 0xcd 0 1M")
        assert hashlib.sha256(cache.path_of(source).read_bytes()).hexdigest() == source.sha256
    finally:
        for name in names:
            compute.delete(name)
        server.httpd.shutdown()
        server.httpd.server_close()
