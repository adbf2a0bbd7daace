"""``vm.console`` on libvirt test:/// hosts: the log read at offsets, and its refusals.

The test driver runs no guest, so the log file is written by the test where libvirt would
have it written; typing needs a real guest (tests/realvm/test_console.py).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.json_format import ParseError

from cloudland.errors import DriverError, InvalidRequest, VMNotFound
from cloudland_agents import ops
from cloudland_agents.compute import console_ops
from cloudland_agents.hypervisor import Hypervisor, open_simulated
from tests.unit.agentcall import call, request

DOMAIN = """<domain type='test'><name>{name}</name><memory>65536</memory><os><type>hvm</type></os>
<devices>{serial}</devices></domain>"""


@pytest.fixture
def hv(tmp_path: Path) -> Iterator[Hypervisor]:
    hypervisor = open_simulated(3, tmp_path)
    yield hypervisor
    hypervisor.close()


def define(hv: Hypervisor, name: str, serial: str = "") -> None:
    hv.conn.defineXML(DOMAIN.format(name=name, serial=serial)).create()


def console(hv: Hypervisor, args: dict[str, Any]) -> dict[str, Any]:
    op = ops.lookup("vm.console", test_ops=False)
    assert op is not None and not op.inline  # file and libvirt I/O: a worker thread
    return call(ops.Context(hv, "job-1", 0.0, lambda _b: None), "vm.console", args)


@pytest.mark.parametrize("serial", [
    "<serial type='pty'><log file='{log}' append='on'/><target port='0'/></serial>",
    "<serial type='file'><source path='{log}'/><target port='0'/></serial>",
])
def test_reads_the_log_from_an_offset(hv: Hypervisor, tmp_path: Path, serial: str) -> None:
    log = tmp_path / "vm.log"
    define(hv, "vm1", serial.format(log=log))
    assert console(hv, {"name": "vm1"}) == {"data": "", "offset": 0, "size": 0}  # not printed yet
    log.write_bytes(b"booting\r\ncloudland-guest: ready\r\n")
    first = console(hv, {"name": "vm1", "max_bytes": 9})
    assert base64.b64decode(first["data"]) == b"booting\r\n" and first["offset"] == 9 and first["size"] == 33
    rest = console(hv, {"name": "vm1", "offset": first["offset"]})
    assert base64.b64decode(rest["data"]) == b"cloudland-guest: ready\r\n" and rest["offset"] == 33
    assert console(hv, {"name": "vm1", "offset": 33})["data"] == ""  # nothing new
    log.write_bytes(b"again\n")  # the domain restarted and its log began anew
    again = console(hv, {"name": "vm1", "offset": 33})
    assert base64.b64decode(again["data"]) == b"again\n" and again["offset"] == 6


def test_refusals_name_the_vm_and_hypervisor(hv: Hypervisor) -> None:
    define(hv, "plain")
    with pytest.raises(DriverError, match=r"VM 'plain' has no serial console log \(hypervisor 3\)"):
        console(hv, {"name": "plain"})
    with pytest.raises(VMNotFound, match=r"VM 'ghost' not found \(hypervisor 3\)"):
        console(hv, {"name": "ghost"})


@pytest.mark.parametrize(("args", "words"), [
    ({}, "name"),
    ({"name": "vm1", "max_bytes": (1 << 20) + 1}, "max_bytes"),
    ({"name": "vm1", "input": base64.b64encode(b"x" * (console_ops.MAX_INPUT + 1)).decode()}, "input"),
])
def test_bad_arguments_name_the_field(hv: Hypervisor, args: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidRequest, match=words):
        console(hv, args)


@pytest.mark.parametrize(("args", "words"), [
    ({"name": "vm1", "offset": -1}, "offset"),
    ({"name": "vm1", "input": "not base64!"}, "input"),
    ({"name": "vm1", "colour": "red"}, "colour"),
])
def test_arguments_of_the_wrong_shape_cannot_even_be_sent(args: dict[str, Any], words: str) -> None:
    """What the Struct once let through and the operation had to refuse, the message refuses."""
    with pytest.raises(ParseError, match=words):
        request("vm.console", args)
