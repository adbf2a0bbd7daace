"""Images on a hypervisor: a cache of verified base files, qcow2 overlays on them, captures.

Vocabulary
    image     a disk image the API stores (``POST /images``, ``PUT /images/{id}/file``): qcow2
              or raw bytes with a sha256 and a size. An ``ImageSource`` says where an agent
              fetches it and what the bytes must be.
    base      the cached copy of an image on one hypervisor: ``<root>/<sha256>.<format>``,
              verified (size and sha256), read-only (0444). Named by content, so two images
              with the same bytes share one base and a base never changes under its name.
    overlay   a VM's disk: a qcow2 file whose backing file is a base (``-b base -F format``).
              The VM writes only into its overlay; the base is shared and never written.
    capture   a standalone copy of a (stopped) VM's disk: the backing chain flattened by
              ``qemu-img convert`` into one file, to be uploaded as a new image.

Verbs and their postconditions (``ImageCache``)
    base(source)          the verified base of ``source`` exists and its path is returned.
                          Downloaded at most once: concurrent callers for one image wait on
                          a single download (a lock per base file); different images download
                          concurrently. A bad size or sha256 is an ImageMismatch and leaves
                          neither the base nor a temporary file behind.
    create_overlay(base, path, size_gib)
                          ``path`` is a qcow2 overlay on ``base`` (of at least ``size_gib``
                          GiB, else the base's virtual size). Idempotent: an overlay already
                          on the same base is kept as it is (not resized); one on another base
                          is refused rather than overwritten, as it holds some VM's data.
    remove_overlay(path)  no file at ``path``. Missing: success.
    remove_stale(pattern, older_than_s)
                          no file of the cache directory matching ``pattern`` (or its .part)
                          is older than ``older_than_s``: leftovers of a dead agent.
    capture(disk, dest, disk_format)
                          ``dest`` is a standalone image of ``disk`` (no backing file); its
                          size and sha256 are returned. A disk in use by a running VM is
                          refused by QEMU's image locking (stop the VM first).
    upload(path, target, sha256)
                          the API holds ``path``'s bytes as image ``target.image_id`` (an HTTP
                          PUT streamed from the file, with the job's upload token and the
                          sha256 for the API to check); the API's refusal is an ImageError
                          quoting its message.
    adopt(path, sha256, disk_format)
                          ``path`` (a capture) became the verified base of ``sha256``, so VMs
                          of the captured image on this hypervisor need no download; if that
                          base is cached already, ``path`` is removed instead.
    evict(sha256, overlays)
                          no base with that sha256 is cached, unless one of ``overlays`` (the
                          caller's VM disks: the cache does not track VMs) is backed by it, in
                          which case nothing is removed and False is returned.

A base found on disk is trusted by size on every call and re-hashed once per process (a
file damaged while the agent was down is caught and fetched again). One agent owns a cache
root: a leftover temporary file of the same base is removed before a download. qemu-img (the
Debian package qemu-utils) does the qcow2 work; its failures, timeouts and absence are
translated into ImageError naming the hypervisor, the image or file, and qemu-img's last
error line (with any hint after it).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from cloudland.errors import ImageError, ImageMismatch
from cloudland_agents.images.source import DISK_FORMATS, ImageSource, ImageTarget, public_url
from cloudland_agents.locks import KeyLocks

__all__ = ["ImageCache", "ImageError", "ImageMismatch"]

CHUNK = 1 << 20          # bytes per read while streaming an image
GIB = 1 << 30
HTTP_TIMEOUT_S = 30.0    # connect and each read; a stalled transfer fails, a long one does not
QEMU_IMG_TIMEOUT_S = 60.0
CAPTURE_TIMEOUT_S = 3600.0  # a convert copies the whole disk


class ImageCache:
    """The verbs of the module docstring, on one hypervisor's cache directory ``root``.

    ``root`` (and its parents) must be traversable by the user QEMU runs as.
    """

    def __init__(self, root: Path, hypervisor_id: int, http_timeout_s: float = HTTP_TIMEOUT_S,
                 qemu_img: str = "qemu-img") -> None:
        self.root = Path(root).absolute()
        self.hypervisor_id = hypervisor_id
        self.http_timeout_s = http_timeout_s
        self.qemu_img = qemu_img
        self.downloads = 0  # transfers started; the tests count them
        self.locks = KeyLocks()  # one per base file, overlay or capture
        self._verified: set[str] = set()  # base names hashed by this process
        self._count_guard = threading.Lock()

    def _error(self, message: str, cls: type[ImageError] = ImageError) -> ImageError:
        return cls(self.hypervisor_id, message)

    # -- bases ------------------------------------------------------------------------------

    def path_of(self, source: ImageSource) -> Path:
        """Where ``source``'s base is (or will be) cached."""
        return self.root / f"{source.sha256}.{source.disk_format}"

    def base(self, source: ImageSource) -> Path:
        path = self.path_of(source)
        with self.locks.hold(path.name):
            if self._cached(source, path):
                return path
            with self._count_guard:
                self.downloads += 1
            self._download(source, path)
            self._verified.add(path.name)
            return path

    def _cached(self, source: ImageSource, path: Path) -> bool:
        """Whether a good base is at ``path``; a damaged one is removed (and then fetched again)."""
        try:
            size = path.stat().st_size
        except (FileNotFoundError, NotADirectoryError):  # the latter: root is a file (base() says)
            return False
        if size == source.size_bytes and (path.name in self._verified or
                                          _sha256_of(path) == source.sha256):
            self._verified.add(path.name)
            return True
        path.unlink(missing_ok=True)  # running VMs keep their open copy; the path gets a good one
        self._verified.discard(path.name)
        return False

    def _download(self, source: ImageSource, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.part")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob(f".{path.name}.*.part"):  # a crashed download's
                stale.unlink()
            with self._open(source) as (stream, promised), open(tmp, "wb") as out:
                size, digest = self._copy(source, stream, out)
                out.flush()
                os.fsync(out.fileno())
            if promised is not None and size < promised:  # the sender stopped short
                raise self._error(f"fetch of image {source.image_id} from {public_url(source.url)} failed "
                                  f"mid-transfer: got {size} of {promised} bytes")
            self._check(source, size, digest)
            tmp.chmod(0o444)
            os.replace(tmp, path)
            _fsync_dir(self.root)
        except BaseException as exc:
            _discard(tmp)
            if isinstance(exc, OSError):  # the cache's disk: full, read-only, not ours
                raise self._error(f"fetch of image {source.image_id} into {self.root} failed: {exc}") from exc
            raise

    @contextmanager
    def _open(self, source: ImageSource) -> Iterator[tuple[IO[bytes], int | None]]:
        """The image's byte stream and how many bytes its sender promised (if it said)."""
        url = public_url(source.url)
        where = f"image {source.image_id} from {url}"
        parts = urllib.parse.urlsplit(source.url)
        if parts.scheme == "file":
            local = Path(urllib.request.url2pathname(parts.path))
            if local.is_dir():  # the API's image directory: <id>.<format> (api/catalog.image_path)
                local = local / f"{source.image_id}.{source.disk_format}"
            try:
                stream = open(local, "rb")
            except OSError as exc:
                raise self._error(f"fetch of {where} failed: {local}: {exc.strerror}") from exc
            with stream:
                promised = os.fstat(stream.fileno()).st_size
                self._check_promise(source, promised, str(local))
                yield stream, promised
            return
        request = urllib.request.Request(source.url)
        if source.token:
            # Unredirected: a redirect to another host must not carry our token there.
            request.add_unredirected_header("Authorization", f"Bearer {source.token}")
        try:
            response = urllib.request.urlopen(request, timeout=self.http_timeout_s)
        except urllib.error.HTTPError as exc:
            exc.close()
            raise self._error(f"fetch of {where} failed: HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise self._error(f"fetch of {where} failed: {reason}") from exc
        with response:
            declared = response.headers.get("Content-Length")
            promised = int(declared) if declared is not None and declared.isdigit() else None
            if promised is not None:
                self._check_promise(source, promised, url)
            yield response, promised

    def _check_promise(self, source: ImageSource, promised: int, where: str) -> None:
        """Refuse a file of the wrong size before copying any of it."""
        if promised != source.size_bytes:
            raise self._error(f"image {source.image_id}: size mismatch from {where}: expected "
                              f"{source.size_bytes} bytes, the source has {promised}", ImageMismatch)

    def _copy(self, source: ImageSource, stream: IO[bytes], out: IO[bytes]) -> tuple[int, str]:
        hasher = hashlib.sha256()
        size = 0
        while chunk := self._read(source, stream):
            size += len(chunk)
            if size > source.size_bytes:  # stop before a wrong file fills the disk
                break
            hasher.update(chunk)
            out.write(chunk)
        return size, hasher.hexdigest()

    def _read(self, source: ImageSource, stream: IO[bytes]) -> bytes:
        try:
            return stream.read(CHUNK)
        except (OSError, http.client.HTTPException) as exc:  # a timeout, reset or short body
            raise self._error(f"fetch of image {source.image_id} from {public_url(source.url)} "
                              f"failed mid-transfer: {exc}") from exc

    def _check(self, source: ImageSource, size: int, digest: str) -> None:
        url = public_url(source.url)
        if size != source.size_bytes:
            got = f"more than {source.size_bytes}" if size > source.size_bytes else str(size)
            raise self._error(f"image {source.image_id}: size mismatch from {url}: expected "
                              f"{source.size_bytes} bytes, got {got}", ImageMismatch)
        if digest != source.sha256:
            raise self._error(f"image {source.image_id}: sha256 mismatch from {url}: expected "
                              f"{source.sha256}, got {digest}", ImageMismatch)

    def remove_stale(self, pattern: str, older_than_s: float) -> int:
        """Remove the files of the cache directory matching ``pattern`` (and their ``.part``
        files) that were not written for ``older_than_s``: what a dead process left. Returns
        how many."""
        cutoff = time.time() - older_than_s
        removed = 0
        for stale in [*self.root.glob(pattern), *self.root.glob(f".{pattern}.part")]:
            with suppress(FileNotFoundError):
                if stale.stat().st_mtime < cutoff:
                    stale.unlink()
                    removed += 1
        return removed

    def evict(self, sha256: str, overlays: Iterable[Path] = ()) -> bool:
        """Remove the bases of ``sha256`` unless one of ``overlays`` is backed by one of them."""
        in_use = [Path(overlay) for overlay in overlays]  # read once per base below
        for base in (self.root / f"{sha256}.{fmt}" for fmt in DISK_FORMATS):
            with self.locks.hold(base.name):
                if not base.exists():  # nothing to remove: no overlay needs reading
                    self._verified.discard(base.name)
                    continue
                for overlay in in_use:
                    if overlay.exists() and self._backing(overlay) == str(base):
                        return False
                try:
                    base.unlink(missing_ok=True)
                except OSError as exc:
                    raise self._error(f"evict of base {base} failed: {exc.strerror}") from exc
                self._verified.discard(base.name)
        return True

    # -- overlays and captures --------------------------------------------------------------

    def create_overlay(self, base: Path, path: Path, size_gib: int | None = None) -> Path:
        base, path = Path(base).absolute(), Path(path).absolute()
        fmt = base.suffix.removeprefix(".")
        if fmt not in DISK_FORMATS:  # never probed: a raw image could pose as qcow2 (CVE-2008-2004)
            raise self._error(f"base {base} has no format suffix ({', '.join(DISK_FORMATS)})")
        if size_gib is not None and size_gib < 1:
            raise self._error(f"overlay {path}: size must be at least 1 GiB, got {size_gib}")
        with self.locks.hold(str(path)):
            base_size = int(self._info(base, fmt)["virtual-size"])
            if size_gib is not None and size_gib * GIB < base_size:
                raise self._error(f"overlay {path}: {size_gib} GiB is smaller than base {base.name}'s "
                                  f"virtual size ({base_size} bytes)")
            if path.exists():
                backing = self._backing(path)
                if backing != str(base):
                    raise self._error(f"overlay {path} exists on another base ({backing}), not {base}")
                return path  # idempotent: same base, kept as it is
            tmp = path.with_name(f".{path.name}.part")
            argv = ["create", "-q", "-f", "qcow2", "-F", fmt, "-b", str(base), str(tmp)]
            try:
                self._run([*argv, f"{size_gib}G"] if size_gib is not None else argv,
                          f"create of overlay {path} on {base.name}")
                info = self._info(tmp, "qcow2")
                got = (info.get("format"), info.get("backing-filename"), info.get("backing-filename-format"))
                if got != ("qcow2", str(base), fmt):
                    raise self._error(f"overlay {path}: qemu-img made {got}, not (qcow2, {base}, {fmt})")
                os.replace(tmp, path)
            except BaseException:
                _discard(tmp)
                raise
            return path

    def remove_overlay(self, path: Path) -> None:
        path = Path(path).absolute()
        if path.parent == self.root:
            raise self._error(f"remove of {path} refused: it is in the image cache, not an overlay")
        with self.locks.hold(str(path)):
            try:
                path.unlink(missing_ok=True)
                path.with_name(f".{path.name}.part").unlink(missing_ok=True)
            except OSError as exc:
                raise self._error(f"remove of overlay {path} failed: {exc.strerror}") from exc

    def capture(self, disk: Path, dest: Path, disk_format: str = "qcow2",
                source_format: str = "qcow2", timeout_s: float = CAPTURE_TIMEOUT_S) -> tuple[int, str]:
        """Flatten ``disk`` (and its backing chain) into ``dest``; return its size and sha256."""
        disk, dest = Path(disk).absolute(), Path(dest).absolute()
        if disk_format not in DISK_FORMATS or source_format not in DISK_FORMATS:
            raise self._error(f"capture of {disk}: formats must be in {DISK_FORMATS}, "
                              f"got {source_format} -> {disk_format}")
        tmp = dest.with_name(f".{dest.name}.part")
        with self.locks.hold(str(dest)):
            try:
                # No -U: QEMU's lock refuses a disk that a running VM is writing.
                self._run(["convert", "-q", "-f", source_format, "-O", disk_format, str(disk), str(tmp)],
                          f"capture of {disk}", timeout_s)
                with open(tmp, "rb+") as out:
                    os.fsync(out.fileno())
                size, digest = tmp.stat().st_size, _sha256_of(tmp)
                os.replace(tmp, dest)
            except BaseException:
                _discard(tmp)
                raise
            _fsync_dir(dest.parent)
            return size, digest

    def upload(self, path: Path, target: ImageTarget, sha256: str) -> None:
        url = public_url(target.url)
        where = f"upload of image {target.image_id} to {url}"
        parts = urllib.parse.urlsplit(target.url)
        # http.client directly, not urllib: it sends a file in ``blocksize`` pieces, and urllib
        # leaves that at 8 KiB (65,536 sends per 512 MiB). Redirects are not followed: a token
        # must not travel to another host.
        kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        connection = kind(parts.hostname or "", parts.port, timeout=self.http_timeout_s, blocksize=CHUNK)
        try:
            with open(path, "rb") as body:
                connection.request("PUT", parts.path + (f"?{parts.query}" if parts.query else ""), body=body,
                                   headers={"Authorization": f"Bearer {target.token}",
                                            "Content-Type": "application/octet-stream",
                                            "Content-Length": str(os.fstat(body.fileno()).st_size),
                                            "X-Image-Sha256": sha256})
                response = connection.getresponse()
                answer = response.read(65536)
            if response.status != 200:
                raise self._error(f"{where} failed: HTTP {response.status}: {_api_message(answer, response.reason)}")
        except (OSError, http.client.HTTPException) as exc:
            raise self._error(f"{where} failed: {exc}") from exc
        finally:
            connection.close()

    def adopt(self, path: Path, sha256: str, disk_format: str) -> Path:
        base = self.root / f"{sha256}.{disk_format}"
        with self.locks.hold(base.name):
            try:
                if base.exists():
                    Path(path).unlink()
                else:
                    self.root.mkdir(parents=True, exist_ok=True)
                    os.chmod(path, 0o444)
                    os.replace(path, base)  # same file system: the capture directory is the cache's sibling
                    _fsync_dir(self.root)
                    self._verified.add(base.name)  # hashed by capture() just now
            except OSError as exc:
                raise self._error(f"adopting capture {path} as base {base.name} failed: {exc.strerror}") from exc
        return base

    # -- qemu-img ---------------------------------------------------------------------------

    def _backing(self, overlay: Path) -> str | None:
        backing = self._info(overlay, "qcow2").get("backing-filename")
        return str(backing) if backing is not None else None

    def _info(self, path: Path, fmt: str) -> dict[str, Any]:
        # -U: a running VM holds a write lock on its overlay, and reading its header is safe.
        out = self._run(["info", "-U", "--output=json", "-f", fmt, str(path)], f"info of {path}")
        info: dict[str, Any] = json.loads(out)
        return info

    def _run(self, args: list[str], what: str, timeout_s: float = QEMU_IMG_TIMEOUT_S) -> str:
        argv = [self.qemu_img, *args]
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=timeout_s)
        except FileNotFoundError as exc:
            raise self._error(f"{what} failed: {self.qemu_img} not found "
                              f"(install the Debian package qemu-utils)") from exc
        except subprocess.TimeoutExpired as exc:
            raise self._error(f"{what} failed: qemu-img did not finish within {timeout_s:g}s") from exc
        if done.returncode != 0:
            raise self._error(f"{what} failed: {_last_error(done.stderr) or f'exit status {done.returncode}'}")
        return done.stdout


def _last_error(stderr: str) -> str:
    """qemu-img's last error line and the hint lines after it, e.g. ``Failed to get shared "write"
    lock`` followed by ``Is another process using the image [...]?``, on one line."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if line.startswith("qemu-img: ")]
    tail = lines[starts[-1]:] if starts else lines[-1:]
    return " ".join(tail).removeprefix("qemu-img: ")


def _api_message(body: bytes, reason: str) -> str:
    """The API's error message in ``body`` (``{"error": {"message": ...}}``), else the HTTP reason."""
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return reason


def _sha256_of(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def _discard(path: Path) -> None:
    """Remove a temporary file after a failure; an error here must not hide that failure."""
    with suppress(OSError):
        path.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
