"""Which interface MPI is kept to: the one holding the address a rank's peers reach it on."""

from __future__ import annotations

import socket

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
