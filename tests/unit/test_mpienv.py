"""Which interface MPI is kept to: the one holding the address a rank's peers reach it on."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from cloudland import mpienv


def test_the_interface_holding_an_address_is_named() -> None:
    assert mpienv.interface_of("127.0.0.1") == "lo"
    assert mpienv.interface_of("localhost") == "lo"


def test_every_address_of_this_host_maps_to_an_interface_that_exists() -> None:
    names = {name for _, name in socket.if_nameindex()}
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: only picks the outgoing address
        outgoing = probe.getsockname()[0]
    finally:
        probe.close()
    assert mpienv.interface_of(outgoing) in names - {None}


def test_addresses_no_interface_holds_name_none() -> None:
    assert mpienv.interface_of("0.0.0.0") is None  # any: nothing to pin
    assert mpienv.interface_of("203.0.113.77") is None  # a documentation address, nobody's
    assert mpienv.interface_of("no-such-host.invalid") is None


def test_the_init_shm_file_is_unlinked_and_nothing_else(tmp_path: Path) -> None:
    """MPICH's MPI_Init file in /dev/shm goes at once (a rank never finalises); other mappings stay."""
    ours = Path(f"/dev/shm/mpich_shm_cltest{os.getpid()}_0")
    other = Path(f"/dev/shm/cltest-other-{os.getpid()}")
    ours.write_bytes(b"\0" * 16)
    other.write_bytes(b"\0" * 16)
    try:
        maps = tmp_path / "maps"
        maps.write_text(
            f"7f0000000000-7f0000100000 rw-s 00000000 00:19 12 {ours}\n"
            f"7f0000100000-7f0000200000 rw-s 00000000 00:19 13 {other}\n"
            "7f0000200000-7f0000300000 r-xp 00000000 fd:00 14 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
            "7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0                          [stack]\n"
            "7ffc00100000-7ffc00101000 r-xp 00000000 00:00 0 \n")
        assert mpienv.unlink_init_shm(maps) == [str(ours)]
        assert not ours.exists() and other.exists()
        assert mpienv.unlink_init_shm(maps) == [str(ours)]  # gone already: no error
    finally:
        ours.unlink(missing_ok=True)
        other.unlink(missing_ok=True)
