"""The image cache on real files: a real HTTP server, real qemu-img, real qcow2 overlays.

The server is ``http.server.ThreadingHTTPServer`` on 127.0.0.1 serving a temporary directory
and requiring a bearer token, as the API's ``GET /images/{id}/file`` does. Tests that run
qemu-img (the Debian package qemu-utils: deploy/bootstrap.sh, deploy/libvirtd.sh install)
take the ``qemu_img`` fixture, which fails them, not skips them, when it is missing.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cloudland.errors import DriverError, InvalidRequest
from cloudland_agents.images.cache import ImageCache, ImageError, ImageMismatch
from cloudland_agents.images.source import ImageSource

HYPERVISOR = 7
TOKEN = "s3cret-t0ken"
MIB = 1 << 20


@pytest.fixture(scope="module")
def qemu_img() -> str:
    found = shutil.which("qemu-img")
    if found is None:
        pytest.fail("qemu-img not found: install the Debian package qemu-utils "
                    "(deploy/bootstrap.sh or deploy/libvirtd.sh install)")
    return found


def qemu_io(path: Path, fmt: str, command: str) -> str:
    done = subprocess.run(["qemu-io", "-f", fmt, "-c", command, str(path)], capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 0 and "Pattern verification failed" not in done.stdout, done.stdout + done.stderr
    return done.stdout


def info(path: Path) -> dict[str, object]:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    result: dict[str, object] = json.loads(out)
    return result


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Server:
    """A token-checking file server; ``hits`` counts the GETs per path, ``delay_s`` slows each.

    With ``rendezvous`` set, each GET waits there for the others: it breaks (and
    ``serialised`` is set) unless that many GETs are in flight at once.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.hits: Counter[str] = Counter()
        self.delay_s = 0.0
        self.rendezvous: threading.Barrier | None = None
        self.serialised = False
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, directory=str(directory), **kwargs)  # type: ignore[arg-type]

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self.send_error(401, "bad token")
                    return
                server.hits[self.path] += 1
                kind, _, name = self.path.lstrip("/").partition("/")
                if kind in ("short", "nolength"):
                    # short: dies mid-transfer; nolength: no Content-Length, the end is the close
                    data = (directory / name).read_bytes()
                    self.send_response(200)
                    if kind == "short":
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2] if kind == "short" else data)
                    self.close_connection = True
                    return
                time.sleep(server.delay_s)
                if server.rendezvous is not None:
                    try:
                        server.rendezvous.wait()
                    except threading.BrokenBarrierError:
                        server.serialised = True
                try:
                    super().do_GET()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the cache hung up on a wrong Content-Length: what it should do

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def publish(self, name: str, data: bytes) -> Path:
        path = self.directory / name
        path.write_bytes(data)
        return path


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    served = tmp_path / "served"
    served.mkdir()
    srv = Server(served)
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture
def cache(tmp_path: Path) -> ImageCache:
    return ImageCache(tmp_path / "cache", HYPERVISOR, http_timeout_s=5)


def source_of(image_id: int, path: Path, url: str, fmt: str, token: str | None = TOKEN) -> ImageSource:
    data = path.read_bytes()
    return ImageSource(image_id, hashlib.sha256(data).hexdigest(), len(data), fmt, url, token)


@pytest.fixture
def qcow2_image(qemu_img: str, tmp_path: Path) -> Path:
    """A 64 MiB qcow2 with 0xcd in its first MiB."""
    path = tmp_path / "src.qcow2"
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(path), "64M"], check=True, timeout=30)
    qemu_io(path, "qcow2", "write -P 0xcd 0 1M")
    return path


def published(server: Server, image_id: int, image: Path, fmt: str) -> ImageSource:
    server.publish(f"{image_id}.{fmt}", image.read_bytes())
    return source_of(image_id, image, f"{server.url}/{image_id}.{fmt}", fmt)


# -- the cache ------------------------------------------------------------------------------


def test_two_vms_from_one_image_copy_it_once(qcow2_image: Path, server: Server, cache: ImageCache,
                                             tmp_path: Path) -> None:
    source = published(server, 1, qcow2_image, "qcow2")
    vms = tmp_path / "vms"
    vms.mkdir()
    first = cache.create_overlay(cache.base(source), vms / "vm-1.qcow2")
    second = cache.create_overlay(cache.base(source), vms / "vm-2.qcow2", size_gib=1)
    base = cache.root / f"{source.sha256}.qcow2"
    assert cache.downloads == 1 and server.hits["/1.qcow2"] == 1
    assert sorted(os.listdir(cache.root)) == [base.name]  # no temp file left
    assert sha256_of(base) == source.sha256 and (base.stat().st_mode & 0o777) == 0o444
    for overlay in (first, second):
        assert info(overlay)["backing-filename"] == str(base)
    assert info(second)["virtual-size"] == 1 << 30


def test_concurrent_callers_share_one_download(server: Server, cache: ImageCache, tmp_path: Path) -> None:
    image = tmp_path / "blob.raw"
    image.write_bytes(os.urandom(3 * MIB + 17))
    source = published(server, 2, image, "raw")
    server.delay_s = 0.3  # every caller arrives while the one download is in flight
    barrier = threading.Barrier(8)

    def fetch(_: int) -> Path:
        barrier.wait()
        return cache.base(source)

    with ThreadPoolExecutor(8) as pool:
        paths = set(pool.map(fetch, range(8)))
    assert paths == {cache.root / f"{source.sha256}.raw"}
    assert cache.downloads == 1 and server.hits["/2.raw"] == 1


def test_different_images_download_separately_and_concurrently(server: Server, cache: ImageCache,
                                                               tmp_path: Path) -> None:
    sources = []
    for image_id in (3, 4):
        image = tmp_path / f"{image_id}.raw"
        image.write_bytes(os.urandom(MIB))
        sources.append(published(server, image_id, image, "raw"))
    server.rendezvous = threading.Barrier(2, timeout=5)  # both transfers must be in flight at once
    with ThreadPoolExecutor(2) as pool:
        bases = list(pool.map(cache.base, sources))
    assert not server.serialised
    assert cache.downloads == 2 and len(set(bases)) == 2
    assert [sha256_of(b) for b in bases] == [s.sha256 for s in sources]


def test_a_cached_base_is_not_fetched_again_by_a_new_cache(server: Server, cache: ImageCache,
                                                           tmp_path: Path) -> None:
    image = tmp_path / "img.raw"
    image.write_bytes(os.urandom(MIB))
    source = published(server, 5, image, "raw")
    cache.base(source)
    restarted = ImageCache(cache.root, HYPERVISOR)  # an agent restart: re-hashes, does not fetch
    assert restarted.base(source) == cache.path_of(source) and restarted.downloads == 0


def test_a_damaged_base_is_fetched_again(server: Server, cache: ImageCache, tmp_path: Path) -> None:
    image = tmp_path / "img.raw"
    image.write_bytes(os.urandom(MIB))
    source = published(server, 6, image, "raw")
    base = cache.base(source)
    base.chmod(0o644)
    with open(base, "r+b") as out:
        out.write(b"\0" * 16)
    assert ImageCache(cache.root, HYPERVISOR).base(source) == base
    assert sha256_of(base) == source.sha256 and server.hits["/6.raw"] == 2


@pytest.mark.parametrize("wrong", ["sha256", "size_small", "size_large"])
def test_a_mismatch_names_the_image_and_leaves_no_file(wrong: str, server: Server, cache: ImageCache,
                                                       tmp_path: Path) -> None:
    image = tmp_path / "img.raw"
    image.write_bytes(os.urandom(2 * MIB))
    good = published(server, 8, image, "raw")
    bad = {
        "sha256": ImageSource(8, "0" * 64, good.size_bytes, "raw", good.url, TOKEN),
        "size_small": ImageSource(8, good.sha256, good.size_bytes - 1, "raw", good.url, TOKEN),
        "size_large": ImageSource(8, good.sha256, good.size_bytes + 1, "raw", good.url, TOKEN),
    }[wrong]
    with pytest.raises(ImageMismatch) as caught:
        cache.base(bad)
    message = str(caught.value)
    assert "image 8" in message and f"hypervisor {HYPERVISOR}" in message
    assert ("sha256 mismatch" in message and "0" * 64 in message and good.sha256 in message
            if wrong == "sha256" else "size mismatch" in message and str(bad.size_bytes) in message)
    assert isinstance(caught.value, DriverError) and caught.value.hypervisor == HYPERVISOR
    assert not cache.root.exists() or os.listdir(cache.root) == []


def test_a_local_file_of_the_wrong_size_is_refused(cache: ImageCache, tmp_path: Path) -> None:
    image = tmp_path / "9.raw"
    image.write_bytes(os.urandom(4 * MIB))
    declared = ImageSource(9, "a" * 64, MIB, "raw", image.as_uri())
    with pytest.raises(ImageMismatch, match=r"image 9: size mismatch from .*9.raw: expected 1048576 bytes, the source has 4194304"):
        cache.base(declared)
    assert os.listdir(cache.root) == []


@pytest.mark.parametrize(("token", "path", "status"), [("wrong-token", "/10.raw", "HTTP 401"),
                                                       (TOKEN, "/missing.raw", "HTTP 404")])
def test_http_errors_name_the_url_but_not_the_token(token: str, path: str, status: str, server: Server,
                                                    cache: ImageCache, tmp_path: Path) -> None:
    image = tmp_path / "img.raw"
    image.write_bytes(b"x" * 1000)
    server.publish("10.raw", image.read_bytes())
    source = source_of(10, image, f"{server.url}{path}?sig=abc", "raw", token)
    with pytest.raises(ImageError) as caught:
        cache.base(source)
    message = str(caught.value)
    assert status in message and f"{server.url}{path}" in message and "image 10" in message
    assert token not in message and "sig=abc" not in message and token not in repr(source)
    assert os.listdir(cache.root) == []


def test_a_transfer_cut_short_is_an_image_error(server: Server, cache: ImageCache, tmp_path: Path) -> None:
    image = tmp_path / "img.raw"
    image.write_bytes(os.urandom(3 * MIB))
    server.publish("24.raw", image.read_bytes())
    source = source_of(24, image, f"{server.url}/short/24.raw", "raw")
    with pytest.raises(ImageError, match=r"fetch of image 24 from .*/short/24.raw failed mid-transfer"):
        cache.base(source)
    assert os.listdir(cache.root) == []


def test_without_content_length_the_stream_is_cut_at_the_expected_size(server: Server, cache: ImageCache,
                                                                       tmp_path: Path) -> None:
    image = tmp_path / "img.raw"
    image.write_bytes(os.urandom(5 * MIB))
    server.publish("25.raw", image.read_bytes())
    good = source_of(25, image, f"{server.url}/nolength/25.raw", "raw")
    small = ImageSource(25, good.sha256, MIB, "raw", good.url, TOKEN)
    with pytest.raises(ImageMismatch, match=r"image 25: size mismatch .* expected 1048576 bytes, got more than"):
        cache.base(small)
    assert os.listdir(cache.root) == []
    assert sha256_of(cache.base(good)) == good.sha256


def test_an_unreachable_server_is_an_image_error(cache: ImageCache, tmp_path: Path) -> None:
    source = ImageSource(11, "a" * 64, 10, "raw", "http://127.0.0.1:9/11.raw", TOKEN)  # discard: refused
    with pytest.raises(ImageError, match=r"fetch of image 11 from http://127.0.0.1:9/11.raw failed"):
        cache.base(source)


def test_file_urls_name_a_file_or_the_api_image_directory(cache: ImageCache, tmp_path: Path) -> None:
    api_images = tmp_path / "state" / "images"
    api_images.mkdir(parents=True)
    (api_images / "12.raw").write_bytes(os.urandom(MIB))
    by_dir = source_of(12, api_images / "12.raw", api_images.as_uri(), "raw", token=None)
    by_file = source_of(12, api_images / "12.raw", (api_images / "12.raw").as_uri(), "raw", token=None)
    assert cache.base(by_dir) == cache.base(by_file) == cache.path_of(by_dir)
    assert cache.downloads == 1 and sha256_of(cache.path_of(by_dir)) == by_dir.sha256
    missing = ImageSource(13, "b" * 64, 5, "raw", api_images.as_uri())
    with pytest.raises(ImageError, match=r"fetch of image 13 .*13.raw: No such file"):
        cache.base(missing)


def test_an_unusable_cache_directory_is_an_image_error(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_bytes(b"")
    image = tmp_path / "26.raw"
    image.write_bytes(b"x" * 100)
    with pytest.raises(ImageError, match=r"fetch of image 26 into .*not-a-dir failed: .*\(hypervisor 7\)"):
        ImageCache(tmp_path / "not-a-dir", HYPERVISOR).base(source_of(26, image, image.as_uri(), "raw"))


def test_a_source_is_validated() -> None:
    with pytest.raises(InvalidRequest, match="image 1: sha256"):
        ImageSource(1, "XYZ", 1, "raw", "file:///x")
    with pytest.raises(InvalidRequest, match="image 1: disk_format"):
        ImageSource(1, "a" * 64, 1, "vmdk", "file:///x")
    with pytest.raises(InvalidRequest, match="image 1: url"):
        ImageSource(1, "a" * 64, 1, "raw", "ftp://user:pw@host/x")


def test_evict_keeps_a_base_an_overlay_uses(qcow2_image: Path, server: Server, cache: ImageCache,
                                            tmp_path: Path) -> None:
    source = published(server, 14, qcow2_image, "qcow2")
    overlay = cache.create_overlay(cache.base(source), tmp_path / "vm.qcow2")
    assert cache.evict(source.sha256, [overlay]) is False and cache.path_of(source).exists()
    cache.remove_overlay(overlay)
    assert cache.evict(source.sha256, [overlay]) is True and not cache.path_of(source).exists()
    cache.base(source)
    assert cache.downloads == 2


# -- overlays and captures ------------------------------------------------------------------


def test_overlays_on_qcow2_and_raw_bases_have_the_right_backing(qcow2_image: Path, cache: ImageCache,
                                                                tmp_path: Path) -> None:
    raw = tmp_path / "src.raw"
    raw.write_bytes(b"\xab" * (8 * MIB))
    for image_id, image, fmt in ((15, qcow2_image, "qcow2"), (16, raw, "raw")):
        base = cache.base(source_of(image_id, image, image.as_uri(), fmt))
        overlay = cache.create_overlay(base, tmp_path / f"vm-{fmt}.qcow2")
        got = info(overlay)
        assert (got["format"], got["backing-filename"], got["backing-filename-format"]) == ("qcow2", str(base), fmt)
        assert got["virtual-size"] == info(base)["virtual-size"]


def test_writing_into_an_overlay_leaves_the_base_alone(qcow2_image: Path, cache: ImageCache,
                                                       tmp_path: Path) -> None:
    source = source_of(17, qcow2_image, qcow2_image.as_uri(), "qcow2")
    base = cache.base(source)
    overlay = cache.create_overlay(base, tmp_path / "vm.qcow2")
    qemu_io(overlay, "qcow2", "write -P 0x5a 0 512k")
    qemu_io(overlay, "qcow2", "read -P 0x5a 0 512k")
    qemu_io(overlay, "qcow2", "read -P 0xcd 512k 512k")  # the base shows through
    assert sha256_of(base) == source.sha256
    qemu_io(base, "qcow2", "read -P 0xcd 0 1M")


def test_create_overlay_is_idempotent_and_refuses_another_base(qcow2_image: Path, cache: ImageCache,
                                                               tmp_path: Path) -> None:
    base = cache.base(source_of(18, qcow2_image, qcow2_image.as_uri(), "qcow2"))
    overlay = cache.create_overlay(base, tmp_path / "vm.qcow2")
    qemu_io(overlay, "qcow2", "write -P 0x11 0 4k")
    assert cache.create_overlay(base, overlay) == overlay
    qemu_io(overlay, "qcow2", "read -P 0x11 0 4k")  # kept, not re-created
    other_image = tmp_path / "other.raw"
    other_image.write_bytes(b"\1" * MIB)
    other = cache.base(source_of(19, other_image, other_image.as_uri(), "raw"))
    with pytest.raises(ImageError, match=r"exists on another base"):
        cache.create_overlay(other, overlay)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_an_overlay_smaller_than_its_base_is_refused(qemu_img: str, cache: ImageCache, tmp_path: Path) -> None:
    big = tmp_path / "big.qcow2"
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(big), "2G"], check=True, timeout=30)
    base = cache.base(source_of(20, big, big.as_uri(), "qcow2"))
    with pytest.raises(ImageError, match=r"1 GiB is smaller than base .* virtual size \(2147483648 bytes\)") as caught:
        cache.create_overlay(base, tmp_path / "vm.qcow2", size_gib=1)
    assert caught.value.hypervisor == HYPERVISOR and not (tmp_path / "vm.qcow2").exists()
    assert info(cache.create_overlay(base, tmp_path / "vm.qcow2", size_gib=3))["virtual-size"] == 3 << 30


def test_qemu_img_failures_carry_its_last_stderr_line(qemu_img: str, cache: ImageCache, tmp_path: Path) -> None:
    fake_base = tmp_path / "cache-less" / ("c" * 64 + ".qcow2")
    fake_base.parent.mkdir()
    fake_base.write_bytes(b"not a qcow2 file at all" * 100)
    with pytest.raises(ImageError, match=rf"info of {fake_base} failed: .*qcow2.*\(hypervisor {HYPERVISOR}\)"):
        cache.create_overlay(fake_base, tmp_path / "vm.qcow2")
    no_tool = ImageCache(cache.root, HYPERVISOR, qemu_img="/nonexistent/qemu-img")
    with pytest.raises(ImageError, match="install the Debian package qemu-utils"):
        no_tool.create_overlay(fake_base, tmp_path / "vm.qcow2")


def test_capture_flattens_an_overlay_into_a_standalone_image(qcow2_image: Path, cache: ImageCache,
                                                             tmp_path: Path) -> None:
    base = cache.base(source_of(21, qcow2_image, qcow2_image.as_uri(), "qcow2"))
    overlay = cache.create_overlay(base, tmp_path / "vm.qcow2")
    qemu_io(overlay, "qcow2", "write -P 0x77 1M 1M")
    dest = tmp_path / "captured.qcow2"
    size, digest = cache.capture(overlay, dest)
    assert (size, digest) == (dest.stat().st_size, sha256_of(dest))
    got = info(dest)
    assert got["format"] == "qcow2" and "backing-filename" not in got
    qemu_io(dest, "qcow2", "read -P 0xcd 0 1M")   # from the base
    qemu_io(dest, "qcow2", "read -P 0x77 1M 1M")  # from the overlay
    assert not (tmp_path / ".captured.qcow2.part").exists()
    # The capture becomes a new image: it caches and overlays like any other.
    new_base = cache.base(ImageSource(22, digest, size, "qcow2", dest.as_uri()))
    qemu_io(cache.create_overlay(new_base, tmp_path / "vm2.qcow2"), "qcow2", "read -P 0x77 1M 1M")


def test_capture_of_a_missing_disk_fails_cleanly(qemu_img: str, cache: ImageCache, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"capture of .*nope.qcow2 failed: .*No such file"):
        cache.capture(tmp_path / "nope.qcow2", tmp_path / "out.qcow2")
    assert list(tmp_path.iterdir()) == []


def test_remove_overlay_is_idempotent_and_spares_the_cache(qcow2_image: Path, cache: ImageCache,
                                                           tmp_path: Path) -> None:
    base = cache.base(source_of(23, qcow2_image, qcow2_image.as_uri(), "qcow2"))
    overlay = cache.create_overlay(base, tmp_path / "vm.qcow2")
    cache.remove_overlay(overlay)
    cache.remove_overlay(overlay)
    assert not overlay.exists()
    with pytest.raises(ImageError, match="in the image cache"):
        cache.remove_overlay(base)
    assert base.exists()
