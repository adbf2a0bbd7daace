"""The image cache under real QEMU: two VMs on overlays of one cached image, then a capture.

QEMU (TCG, through libvirtd and qemu:///system) must open each VM's whole backing chain, as
the user libvirt-qemu, or the domain does not start; the unit tests never get that far. The
disks hold no OS: SeaBIOS finds nothing to boot and the VM idles, running, which is all that
is needed here. libvirtd is started with deploy/libvirtd.sh only if nothing answers yet, and
then stopped afterwards; a daemon someone else started is left alone.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from cloudland_agents.compute import Disk, DomainSpec, LibvirtCompute
from cloudland_agents.images import ImageCache, ImageError, ImageSource
from tests.unit.test_image_cache import TOKEN, Server, info, qemu_io

pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.realvm]

REPO = Path(__file__).resolve().parents[2]
URI = "qemu:///system"
HYPERVISOR = 1


@pytest.fixture(scope="module")
def conn() -> Iterator[libvirt.virConnect]:
    if os.geteuid() != 0:
        pytest.skip("starts libvirtd and QEMU: needs root")
    script = str(REPO / "deploy" / "libvirtd.sh")
    ours = subprocess.run([script, "status"], timeout=60, stdin=subprocess.DEVNULL).returncode != 0
    if ours:
        subprocess.run([script, "start"], check=True, timeout=900, stdin=subprocess.DEVNULL)
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    connection = libvirt.open(URI)
    try:
        yield connection
    finally:
        connection.close()
        if ours:
            subprocess.run([script, "stop"], check=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Not pytest's tmp_path: its 0700 parents keep QEMU, which runs as libvirt-qemu, out.
    path = Path(tempfile.mkdtemp(prefix="cloudland-images-"))
    path.chmod(0o755)
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


def test_two_vms_on_one_cached_image_then_capture(conn: libvirt.virConnect, workdir: Path) -> None:
    served = workdir / "served"
    served.mkdir()
    image = served / "1.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True, timeout=30)
    qemu_io(image, "qcow2", "write -P 0xcd 0 1M")
    data = image.read_bytes()
    server = Server(served)
    server.thread.start()
    compute = LibvirtCompute(conn, HYPERVISOR)
    names = [f"cl-images-{uuid.uuid4().hex[:8]}-{i}" for i in (1, 2)]
    try:
        source = ImageSource(1, hashlib.sha256(data).hexdigest(), len(data), "qcow2",
                             f"{server.url}/1.qcow2", TOKEN)
        cache = ImageCache(workdir / "cache", HYPERVISOR)
        overlays = []
        for name in names:
            overlay = cache.create_overlay(cache.base(source), workdir / f"{name}.qcow2", size_gib=1)
            overlays.append(overlay)
            spec = DomainSpec(name, str(uuid.uuid4()), vcpus=1, memory_mib=64, domain_type="qemu",
                              disks=(Disk(str(overlay)),))
            assert compute.create(spec)["created"] is True
        assert [compute.get(name)["state"] for name in names] == ["running", "running"]
        assert cache.downloads == 1 and server.hits["/1.qcow2"] == 1
        assert os.listdir(cache.root) == [f"{source.sha256}.qcow2"]

        # A running VM holds QEMU's write lock on its overlay: no capture of a live disk.
        with pytest.raises(ImageError, match=r"capture of .* failed: .*lock"):
            cache.capture(overlays[0], workdir / "live.qcow2")
        compute.stop(names[0], force=True)
        size, digest = cache.capture(overlays[0], workdir / "captured.qcow2")
        captured = workdir / "captured.qcow2"
        assert (size, digest) == (captured.stat().st_size, hashlib.sha256(captured.read_bytes()).hexdigest())
        assert "backing-filename" not in info(captured)
        qemu_io(captured, "qcow2", "read -P 0xcd 0 1M")
        assert hashlib.sha256(cache.path_of(source).read_bytes()).hexdigest() == source.sha256
    finally:
        for name in names:
            compute.delete(name)
        server.httpd.shutdown()
        server.httpd.server_close()
