"""Which disk a guest boots from when it is defined again on its own files (recover)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudland_agents.compute import guests
from cloudland_agents.hypervisor import Hypervisor, open_simulated

UUID = "6a1e0c55-3b0a-4a39-9a52-0f6f0b7a4c11"


@pytest.fixture
def hv(tmp_path: Path) -> Iterator[Hypervisor]:
    hypervisor = open_simulated(4, tmp_path)
    yield hypervisor
    hypervisor.close()


def disk(hv: Hypervisor, name: str, mtime: int) -> None:
    path = guests.guest_dir(hv, UUID) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"QFI\xfb")
    os.utime(path, ns=(mtime, mtime))


def test_a_new_guest_gets_disk_qcow2(hv: Hypervisor) -> None:
    assert guests.own_disk(hv, UUID) == guests.NEW_DISK == "disk.qcow2"


def test_a_rebuilt_guest_keeps_the_disk_its_rebuild_made(hv: Hypervisor) -> None:
    disk(hv, "disk-0123abcd.qcow2", 10**18)
    (guests.guest_dir(hv, UUID) / "config-2.iso").write_bytes(b"")
    assert guests.own_disk(hv, UUID) == "disk-0123abcd.qcow2"


def test_of_two_disks_the_last_written_is_the_guests(hv: Hypervisor) -> None:
    disk(hv, "disk.qcow2", 10**18)
    disk(hv, "disk-0123abcd.qcow2", 2 * 10**18)
    assert guests.own_disk(hv, UUID) == "disk-0123abcd.qcow2"
    disk(hv, "disk.qcow2", 3 * 10**18)
    assert guests.own_disk(hv, UUID) == "disk.qcow2"
