"""What a backend is to the storage driver: a place that holds volumes and their snapshots.

A ``Store`` knows nothing of domains: the driver (driver.py) attaches what ``disk`` describes.
Its verbs are the offline half of the ``vol.*`` contract (proto/v1/storage.proto), each
idempotent on the volume or snapshot it names. ``run`` is the one way the stores call their
tools (qemu-img, rbd): a failure is a VolumeError naming the tool's last error line.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from cloudland.errors import VolumeError
from cloudland_agents.storage.disks import VolumeDisk

MIB = 1 << 20
MAX_BYTES = 64 << 40  # 64 TiB: the contract's ceiling
TOOL_TIMEOUT_S = 600.0


def whole_mib(size_bytes: int) -> int:
    """``size_bytes`` rounded up to a whole MiB, as volumes are made."""
    return -(-size_bytes // MIB) * MIB


class Store(Protocol):
    """One backend's volumes (``local.py``, ``rbd.py``)."""

    name: str
    live_snapshots: bool  # a snapshot may be taken while a running guest writes (crash-consistent)

    def exists(self, volume_id: int) -> bool: ...
    def size(self, volume_id: int) -> int: ...  # VolumeNotFound
    def create(self, volume_id: int, size_bytes: int) -> None: ...
    def create_from(self, volume_id: int, image: Path, image_format: str, size_bytes: int) -> None: ...
    def clone(self, volume_id: int, source_id: int, snapshot_id: int) -> None: ...  # VolumeNotFound
    def delete(self, volume_id: int) -> bool: ...
    def resize(self, volume_id: int, size_bytes: int) -> None: ...
    def snapshots(self, volume_id: int) -> list[int]: ...
    def snapshot(self, volume_id: int, snapshot_id: int) -> None: ...
    def snapshot_delete(self, volume_id: int, snapshot_id: int) -> bool: ...
    def snapshot_size(self, volume_id: int, snapshot_id: int) -> int: ...  # VolumeNotFound
    def path(self, volume_id: int) -> str: ...
    def disk(self, volume_id: int, attachment_id: int, device: str, read_only: bool) -> VolumeDisk: ...
    def close(self) -> None: ...


def virtual_size(image: Path, image_format: str, error: Callable[[str], VolumeError]) -> int:
    """The virtual size of image file ``image``, from qemu-img."""
    info = json.loads(run(["qemu-img", "info", "-U", "--output=json", "-f", image_format, str(image)],
                          f"info of image {image.name}", error, "qemu-utils"))
    return int(info["virtual-size"])


def run(argv: list[str], what: str, error: Callable[[str], VolumeError], package: str,
        timeout_s: float = TOOL_TIMEOUT_S) -> str:
    """Run a tool; its stdout, or ``error`` of a message naming ``what`` and the tool's last error."""
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError as exc:
        raise error(f"{what} failed: {argv[0]} not found (install the Debian package {package})") from exc
    except subprocess.TimeoutExpired as exc:
        raise error(f"{what} failed: {argv[0]} did not finish within {timeout_s:g}s") from exc
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.strip().splitlines() if line.strip()]
        raise error(f"{what} failed: {lines[-1] if lines else f'exit status {done.returncode}'}")
    return done.stdout
