"""A real VM on libvirtd + QEMU (TCG): the test guest boots, reads its config drive, talks on its console.

libvirtd and the built guest come from the session fixture ``qemu_libvirt``
(tests/realvm/qemu_host.py). The guest boots by direct kernel boot with the config drive as
an IDE CD-ROM, as nova attaches it. It (deploy/guest/init) prints "cloudland-guest: key=value"
lines on ttyS0, which libvirt logs to a file.
"""

from __future__ import annotations

import hashlib
import io
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pycdlib
import pytest

from cloudland_agents.compute.configdrive import build_config_drive
from cloudland_agents.compute.domain import Disk, DomainSpec
from cloudland_agents.compute.domain import domain_xml as agent_domain_xml

pytest.register_assert_rewrite("tests.realvm.qemu_host")  # before the import: it is a plugin too
from tests.realvm.qemu_host import (  # noqa: E402
    BOOT_TIMEOUT_S, CMDLINE, READY, QemuSession, console_echo, qemu_processes,
)

pytest_plugins = ["tests.realvm.qemu_host"]
pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.realvm]

SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq0g8tV1RkqyZ1mYV0m2v7bq3x2Jw2mJ7yY9o8t2xQF ci@cloudland"
USER_DATA = b"#cloud-config from the realvm test\nruncmd: [echo hi]\n"
NETWORK = {"links": [], "networks": [], "services": [{"type": "dns", "address": "10.0.0.1"}]}


@dataclass
class Guest:
    """A booted test VM and what it should report."""

    dom: libvirt.virDomain
    name: str
    uuid: str
    hostname: str
    log: Path
    iso: Path
    qemu_pid: int
    boot_s: float = 0.0

    def console(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for(self, line: str, timeout: float = BOOT_TIMEOUT_S) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if line in self.console():
                return time.monotonic() - started
            time.sleep(0.1)
        raise AssertionError(f"no {line!r} on the console within {timeout}s:\n{self.console()}")

    def reported(self) -> dict[str, str]:
        """The guest's "cloudland-guest: key=value" lines."""
        found: dict[str, str] = {}
        for line in self.console().splitlines():
            if line.startswith("cloudland-guest: ") and "=" in line:
                key, _, value = line.removeprefix("cloudland-guest: ").partition("=")
                found[key] = value.rstrip("\r")
        return found


def domain_xml(name: str, vm_uuid: str, guest: Path, iso: Path, log: Path) -> str:
    """The agent's XML (agents/compute/domain.py) for a direct kernel boot with the config drive as a CD-ROM."""
    return agent_domain_xml(DomainSpec(
        name=name, uuid=vm_uuid, vcpus=1, memory_mib=128, domain_type="qemu",  # TCG: no usable KVM here
        kernel=str(guest / "vmlinuz"), initrd=str(guest / "initrd.img"), cmdline=CMDLINE,
        disks=(Disk(str(iso), "raw", "hdc", "cdrom"),), console_log=str(log)))


@pytest.fixture
def vm(qemu_libvirt: QemuSession, qemu_dir: Path) -> Iterator[Guest]:
    vm_uuid = str(uuid.uuid4())
    name = f"cloudland-realvm-{vm_uuid[:8]}"
    hostname = f"guest-{vm_uuid[:8]}"
    iso = build_config_drive(qemu_dir / f"{name}.iso", hostname=hostname, uuid=vm_uuid, ssh_keys=[SSH_KEY],
                             user_data=USER_DATA, network_config=NETWORK)
    log = qemu_dir / f"{name}.console.log"
    qemu_libvirt.made.add((name, vm_uuid))  # the session checks that none is left
    dom = qemu_libvirt.conn.defineXML(domain_xml(name, vm_uuid, qemu_libvirt.guest, iso, log))
    try:
        started = time.monotonic()
        dom.create()
        pid = int(Path(f"/run/libvirt/qemu/{name}.pid").read_text())
        handle = Guest(dom, name, vm_uuid, hostname, log, iso, pid)
        handle.wait_for(READY)
        handle.boot_s = time.monotonic() - started
        print(f"{name}: ready {handle.boot_s:.2f}s after start")
        yield handle
    finally:
        try:
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:  # a test already removed it
                raise


def iso_file(iso: Path, rr_path: str) -> bytes:
    image = pycdlib.PyCdlib()
    image.open(str(iso))
    try:
        out = io.BytesIO()
        image.get_file_from_iso_fp(out, rr_path=rr_path)
        return out.getvalue()
    finally:
        image.close()


def test_guest_reads_its_config_drive_and_leaves_no_qemu(qemu_libvirt: QemuSession, vm: Guest) -> None:
    seen = vm.reported()
    assert seen["config-drive"] == "/dev/sr0"
    assert seen["hostname"] == vm.hostname
    assert seen["uuid"] == vm.uuid
    assert seen["public-keys"] == "1"
    assert seen["user-data"] == USER_DATA.decode().splitlines()[0]
    assert seen["user-data-sha256"] == hashlib.sha256(USER_DATA).hexdigest()
    network_json = iso_file(vm.iso, "/openstack/latest/network_data.json")
    assert seen["network-data-sha256"] == hashlib.sha256(network_json).hexdigest()
    assert "error" not in seen

    assert qemu_processes({vm.name}) == {vm.qemu_pid: vm.name}
    vm.dom.destroy()
    vm.dom.undefine()
    assert qemu_processes({vm.name}) == {}
    assert not Path(f"/proc/{vm.qemu_pid}").exists()
    with pytest.raises(libvirt.libvirtError):
        qemu_libvirt.conn.lookupByName(vm.name)


def test_console_stream_and_acpi_shutdown(vm: Guest) -> None:
    # The WebSocket console will sit on this: virStream + virDomainOpenConsole.
    expected = f"sum=42 host={vm.hostname}".encode()
    echoed = console_echo(vm.dom, b"echo sum=$((6*7)) host=$(hostname)", expected)
    assert expected in echoed, echoed

    started = time.monotonic()
    vm.dom.shutdown()  # ACPI power button
    while vm.dom.isActive() and time.monotonic() - started < 60:
        time.sleep(0.1)
    assert not vm.dom.isActive(), f"guest ignored the ACPI power button:\n{vm.console()}"
    print(f"{vm.name}: ACPI shutdown took {time.monotonic() - started:.2f}s")
    assert "cloudland-guest: powering off" in vm.console()
    assert qemu_processes({vm.name}) == {}
