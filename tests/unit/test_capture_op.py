"""``vm.capture`` (agents/compute/ops.py) on real files: a VM of a simulated hypervisor whose
disk is a real qcow2 overlay, real qemu-img, and a real HTTP server taking the upload.

The server stands in for the API's ``PUT /images/{id}/upload`` (tests/api/test_capture.py
tests that route): it checks the bearer token and the announced sha256 and keeps the bytes.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf.json_format import ParseError

from cloudland.errors import DriverError, InvalidRequest, VMStateError
from cloudland_agents.compute import guests
from cloudland_agents.hypervisor import Hypervisor, open_simulated
from cloudland_agents.images.cache import ImageError
from tests.unit.agentcall import request
from tests.unit.test_compute_ops import UUID, run
from tests.unit.test_image_cache import info, qemu_img, qemu_io  # noqa: F401 (qemu_img: a fixture)

TOKEN = "upl0ad-t0ken"


class UploadServer:
    """Takes ``PUT /<image_id>/upload``; answers ``refuse`` (status, message) instead when set."""

    def __init__(self) -> None:
        self.received: dict[int, bytes] = {}
        self.refuse: tuple[int, str] | None = None
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_PUT(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                image_id = int(self.path.split("/")[1])
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self.answer(401, {"error": {"code": "unauthorized", "message": "invalid image upload token"}})
                elif server.refuse is not None:
                    status, message = server.refuse
                    self.answer(status, {"error": {"code": "conflict", "message": message}})
                elif self.headers.get("X-Image-Sha256") != hashlib.sha256(body).hexdigest():
                    self.answer(400, {"error": {"code": "invalid_request", "message": "checksum mismatch"}})
                else:
                    server.received[image_id] = body
                    self.answer(200, {"id": image_id, "status": "active"})

            def answer(self, status: int, body: dict[str, object]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()


@pytest.fixture
def server() -> Iterator[UploadServer]:
    srv = UploadServer()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture
def hv(tmp_path: Path) -> Iterator[Hypervisor]:
    hypervisor = open_simulated(5, tmp_path / "state")
    yield hypervisor
    hypervisor.close()


@pytest.fixture
def disk(hv: Hypervisor, qemu_img: str, tmp_path: Path) -> Path:  # noqa: F811 (the imported fixture)
    """A qcow2 overlay (0xab in its third MiB) on a base with 0xcd in its first MiB."""
    base = tmp_path / "base.qcow2"
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(base), "16M"], check=True, timeout=30)
    qemu_io(base, "qcow2", "write -P 0xcd 0 1M")
    overlay = guests.cache_for(hv).create_overlay(base, tmp_path / "disk.qcow2")
    qemu_io(overlay, "qcow2", "write -P 0xab 2M 1M")
    return overlay


def make_vm(hv: Hypervisor, disk_path: Path | None, state: str = "shutoff") -> None:
    disks = [{"path": str(disk_path)}] if disk_path else []
    run(hv, "vm.create", {"name": "web-1", "uuid": UUID, "vcpus": 1, "memory_mib": 256, "disks": disks})
    if state == "shutoff":
        run(hv, "vm.stop", {"name": "web-1", "force": True})


def target(server: UploadServer, image_id: int = 9, fmt: str = "qcow2") -> dict[str, object]:
    return {"image_id": image_id, "disk_format": fmt, "url": f"{server.url}/{image_id}/upload", "token": TOKEN}


def test_a_stopped_vm_is_captured_uploaded_and_cached(hv: Hypervisor, disk: Path, server: UploadServer,
                                                       tmp_path: Path) -> None:
    make_vm(hv, disk)
    payload = run(hv, "vm.capture", {"name": "web-1", "target": target(server)})
    data = server.received[9]
    assert payload == {"image_id": 9, "size_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    captured = tmp_path / "captured.qcow2"
    captured.write_bytes(data)
    assert "backing-filename" not in info(captured)  # standalone: the chain is flattened
    qemu_io(captured, "qcow2", "read -P 0xcd 0 1M")  # from the base
    qemu_io(captured, "qcow2", "read -P 0xab 2M 1M")  # from the VM's own writes
    # The copy became the new image's base on this hypervisor: booting from it downloads nothing.
    cache = guests.cache_for(hv)
    base = cache.root / f"{payload['sha256']}.qcow2"
    assert base.read_bytes() == data and base.stat().st_mode & 0o777 == 0o444
    assert sorted(p.name for p in cache.root.iterdir()) == [base.name]
    # A replayed job captures and uploads the same bytes again (the API takes them as success).
    del server.received[9]
    assert run(hv, "vm.capture", {"name": "web-1", "target": target(server)}) == payload
    assert server.received[9] == data
    assert sorted(p.name for p in cache.root.iterdir()) == [base.name]


def test_raw_capture(hv: Hypervisor, disk: Path, server: UploadServer, tmp_path: Path) -> None:
    make_vm(hv, disk)
    payload = run(hv, "vm.capture", {"name": "web-1", "target": target(server, 4, "raw")})
    data = server.received[4]
    assert len(data) == 16 << 20 and payload["size_bytes"] == len(data)
    assert data[:1 << 20] == b"\xcd" * (1 << 20) and data[2 << 20:3 << 20] == b"\xab" * (1 << 20)


def test_a_running_vm_is_refused(hv: Hypervisor, disk: Path, server: UploadServer) -> None:
    make_vm(hv, disk, state="running")
    with pytest.raises(VMStateError, match=r"capture of VM 'web-1' needs it shut off, it is running; "
                                           r"stop it first \(hypervisor 5, job job-1\)"):
        run(hv, "vm.capture", {"name": "web-1", "target": target(server)})
    assert server.received == {}


def test_a_simulated_vm_has_no_disk(hv: Hypervisor, server: UploadServer) -> None:
    make_vm(hv, None)
    with pytest.raises(DriverError, match=r"VM 'web-1' has no disk to capture \(a simulated hypervisor keeps "
                                          r"no guest disks\) \(hypervisor 5, job job-1\)"):
        run(hv, "vm.capture", {"name": "web-1", "target": target(server)})


def test_a_refused_upload_names_the_image_and_leaves_nothing(hv: Hypervisor, disk: Path,
                                                             server: UploadServer) -> None:
    make_vm(hv, disk)
    server.refuse = (404, "image 9 not found (deleted while it was being captured?)")
    with pytest.raises(ImageError) as raised:
        run(hv, "vm.capture", {"name": "web-1", "target": target(server)})
    message = str(raised.value)
    assert message == (f"upload of image 9 to {server.url}/9/upload failed: HTTP 404: image 9 not found "
                       "(deleted while it was being captured?) (hypervisor 5)")
    assert TOKEN not in message
    assert list(guests.cache_for(hv).root.iterdir()) == []  # no capture left, nothing adopted


def test_an_unreachable_api_is_an_image_error(hv: Hypervisor, disk: Path) -> None:
    make_vm(hv, disk)
    image = {"image_id": 3, "disk_format": "qcow2", "url": "http://127.0.0.1:9/3/upload", "token": TOKEN}
    with pytest.raises(ImageError, match=r"upload of image 3 to http://127.0.0.1:9/3/upload failed"):
        run(hv, "vm.capture", {"name": "web-1", "target": image})
    assert list(guests.cache_for(hv).root.iterdir()) == []


@pytest.mark.parametrize(("image", "error"), [
    (None, "disk_format must be one of"),
    ({"image_id": 1, "disk_format": "qcow2", "url": "http://x/1"}, "token is required"),
    ({"image_id": 1, "disk_format": "vmdk", "url": "http://x/1", "token": "t"}, "disk_format must be one of"),
    ({"image_id": 1, "disk_format": "raw", "url": "file:///tmp/x", "token": "t"}, "url must be http"),
])
def test_bad_arguments_are_refused(hv: Hypervisor, image: object, error: str) -> None:
    make_vm(hv, None)
    with pytest.raises(InvalidRequest, match=error):
        run(hv, "vm.capture", {"name": "web-1"} | ({"target": image} if image is not None else {}))


@pytest.mark.parametrize(("image", "error"), [
    ({"image_id": 1.5, "disk_format": "raw", "url": "http://x/1", "token": "t"}, "image_id"),
    ({"image_id": 1, "disk_format": "raw", "url": "http://x/1", "token": "t", "extra": 1}, "extra"),
])
def test_a_target_of_the_wrong_shape_cannot_even_be_sent(image: object, error: str) -> None:
    with pytest.raises(ParseError, match=error):
        request("vm.capture", {"name": "web-1", "target": image})


def test_an_unknown_vm_is_refused(hv: Hypervisor, server: UploadServer) -> None:
    with pytest.raises(DriverError, match="web-9"):
        run(hv, "vm.capture", {"name": "web-9", "target": target(server)})


# -- image.evict: a deleted image's base leaves the cache once no guest's disk needs it ---------


def test_evict_keeps_a_base_a_guest_uses_then_removes_it(hv: Hypervisor, qemu_img: str,  # noqa: F811
                                                        tmp_path: Path) -> None:
    image = tmp_path / "image.qcow2"
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(image), "16M"], check=True, timeout=30)
    sha256 = hashlib.sha256(image.read_bytes()).hexdigest()
    cache = guests.cache_for(hv)
    base = cache.adopt(image, sha256, "qcow2")
    disk = guests.guest_dir(hv, UUID) / "disk.qcow2"
    disk.parent.mkdir(parents=True)
    cache.create_overlay(base, disk)
    assert run(hv, "image.evict", {"sha256": sha256}) == {"in_use": True}
    assert base.exists()
    assert guests.remove(hv, UUID)
    assert run(hv, "image.evict", {"sha256": sha256}) == {"in_use": False}
    assert not base.exists()
    assert run(hv, "image.evict", {"sha256": sha256}) == {"in_use": False}  # idempotent


def test_evict_on_a_hypervisor_without_a_cache_makes_none(hv: Hypervisor) -> None:
    assert run(hv, "image.evict", {"sha256": "a" * 64}) == {"in_use": False}
    assert not (hv.state_dir / "image-cache").exists()


@pytest.mark.parametrize("args", [{}, {"sha256": "A" * 64}, {"sha256": "a" * 63}, {"sha256": "a" * 64, "x": 1}])
def test_evict_refuses_bad_arguments(hv: Hypervisor, args: dict[str, object]) -> None:
    with pytest.raises((InvalidRequest, ParseError)):  # the last: not even a request
        run(hv, "image.evict", args)


def test_a_capture_removes_what_dead_captures_left(hv: Hypervisor, disk: Path, server: UploadServer) -> None:
    """Leftovers of other jobs go once older than any capture; a recent one (a capture still
    running on another thread) stays."""
    make_vm(hv, disk)
    root = guests.cache_for(hv).root
    old = [root / ".capture-deadjob.qcow2", root / "..capture-deadjob.qcow2.part"]
    recent = root / ".capture-livejob.qcow2"
    for path in (*old, recent):
        path.write_bytes(b"x")
    for path in old:
        os.utime(path, (time.time() - 3 * 3600, time.time() - 3 * 3600))
    payload = run(hv, "vm.capture", {"name": "web-1", "target": target(server)})
    assert sorted(p.name for p in root.iterdir()) == sorted([recent.name, f"{payload['sha256']}.qcow2"])
