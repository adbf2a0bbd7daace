"""A VM made from a disk image: SeaBIOS boots the test guest's disk through a qcow2 overlay.

What "create a VM from an uploaded image" does with a real image: deploy/guest/build.sh makes
the guest as a bootable disk (guest.raw and guest.qcow2: an MBR, a FAT16 partition, syslinux,
the kernel and initramfs of the direct-boot guest). Each VM gets a qcow2 overlay on it and
boots with <boot dev='hd'/>, no <kernel>: SeaBIOS, then the MBR, syslinux, Linux and the
guest's /init, which reads the config drive and reports on the serial console
("cloudland-guest: key=value", deploy/guest/init). The base image must stay unchanged.

libvirtd and the built guest come from the session fixture ``qemu_libvirt``
(tests/realvm/qemu_host.py).
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree as ET

import libvirt
import pytest

from cloudland_agents.compute.configdrive import build_config_drive
from cloudland_agents.compute.domain import Disk, DomainSpec, domain_xml

pytest.register_assert_rewrite("tests.realvm.qemu_host")  # before the import: it is a plugin too
from tests.realvm.qemu_host import READY, QemuSession, console_echo, qemu_processes  # noqa: E402
from tests.realvm.test_boot import NETWORK, SSH_KEY, USER_DATA, Guest  # noqa: E402

pytest_plugins = ["tests.realvm.qemu_host"]
pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.realvm]

SHUTDOWN_TIMEOUT_S = 60.0
MARK_SECTOR = 100  # in the gap between the MBR and the partition: free for the test to write


@dataclass
class DiskGuest(Guest):
    """A test VM booted from a qcow2 overlay on the guest's disk image."""

    overlay: Path = Path()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def qemu_img(*args: str) -> str:
    return subprocess.run(["qemu-img", *args], check=True, timeout=60, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL).stdout


def overlay_on(base: Path, base_format: str, path: Path) -> Path:
    qemu_img("create", "-q", "-f", "qcow2", "-F", base_format, "-b", str(base), str(path))
    return path


def sector(image: Path, image_format: str, number: int) -> bytes:
    """One 512-byte sector of an image, read through its backing chain."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sector"
        # The first number + 1 sectors: qemu-img dd cannot skip past its count.
        qemu_img("dd", "-f", image_format, "-O", "raw", "bs=512", f"count={number + 1}", f"if={image}",
                 f"of={out}")
        return out.read_bytes()[number * 512:]


def disk_domain_xml(name: str, vm_uuid: str, disk: Path, config_drive: Path, config_bus: str, log: Path) -> str:
    """The agent's XML (agents/compute/domain.py) of a domain that boots from its first disk (SeaBIOS), as
    a VM made from an image does; the config drive as nova attaches it (an IDE CD-ROM) or as a
    second virtio disk."""
    drive = (Disk(str(config_drive), "raw", "hdc", "cdrom") if config_bus == "ide"
             else Disk(str(config_drive), "raw", "vdb", "disk"))
    return domain_xml(DomainSpec(name=name, uuid=vm_uuid, vcpus=1, memory_mib=128, domain_type="qemu",
                                 disks=(Disk(str(disk), "qcow2", "vda"), drive), console_log=str(log)))


@pytest.fixture
def make_vm(qemu_libvirt: QemuSession, qemu_dir: Path) -> Iterator[Callable[..., DiskGuest]]:
    """Defines and starts VMs on overlays of a base image; destroys and undefines what is left."""
    names: list[str] = []

    def make(base: Path, base_format: str = "qcow2", config_bus: str = "ide") -> DiskGuest:
        vm_uuid = str(uuid.uuid4())
        name = f"cloudland-diskboot-{vm_uuid[:8]}"
        hostname = f"disk-{vm_uuid[:8]}"
        iso = build_config_drive(qemu_dir / f"{name}.iso", hostname=hostname, uuid=vm_uuid, ssh_keys=[SSH_KEY],
                                 user_data=USER_DATA, network_config=NETWORK)
        overlay = overlay_on(base, base_format, qemu_dir / f"{name}.qcow2")
        log = qemu_dir / f"{name}.console.log"
        names.append(name)
        qemu_libvirt.made.add((name, vm_uuid))  # the session checks that none is left
        dom = qemu_libvirt.conn.defineXML(disk_domain_xml(name, vm_uuid, overlay, iso, config_bus, log))
        dom.create()
        pid = int(Path(f"/run/libvirt/qemu/{name}.pid").read_text())
        return DiskGuest(dom, name, vm_uuid, hostname, log, iso, pid, overlay=overlay)

    yield make
    # By name on the session's live connection: should the shared libvirtd have been restarted
    # meanwhile, a domain left defined would come back with it.
    for name in names:
        try:
            dom = qemu_libvirt.conn.lookupByName(name)
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:  # a test already removed it
                raise


def wait_ready(vm: Guest, started: float) -> None:
    vm.wait_for(READY)
    vm.boot_s = time.monotonic() - started
    print(f"{vm.name}: ready {vm.boot_s:.2f}s after start")


def assert_booted_from_disk(vm: Guest, config_drive: str) -> None:
    xml = ET.fromstring(vm.dom.XMLDesc(0))
    assert xml.find("os/kernel") is None and xml.find("os/boot").get("dev") == "hd"  # type: ignore[union-attr]
    console = vm.console()
    assert "SYSLINUX" in console, console  # the disk's boot loader ran (syslinux.cfg: SERIAL 0)
    seen = vm.reported()
    assert seen["config-drive"] == config_drive  # not the FAT boot disk
    assert seen["hostname"] == vm.hostname
    assert seen["uuid"] == vm.uuid
    assert seen["public-keys"] == "1"
    assert seen["user-data-sha256"] == hashlib.sha256(USER_DATA).hexdigest()
    assert "error" not in seen


def run_on_console(vm: Guest, command: str, expected: str, timeout: float = 30.0) -> None:
    """Type ``command`` into the guest's console shell; wait until ``expected`` is printed."""
    echoed = console_echo(vm.dom, command.encode(), expected.encode(), timeout)
    assert expected.encode() in echoed, echoed


def acpi_shutdown(vm: Guest) -> None:
    started = time.monotonic()
    pressed = 0.0
    while vm.dom.isActive() and time.monotonic() - started < SHUTDOWN_TIMEOUT_S:
        # Press again every 5 s, as the driver does (agents/compute/driver.py): on a loaded machine
        # a press can come before the guest's init listens to the button.
        if time.monotonic() - pressed > 5:
            try:
                vm.dom.shutdown()  # ACPI power button
            except libvirt.libvirtError:
                pass  # already powering off
            pressed = time.monotonic()
        time.sleep(0.1)
    assert not vm.dom.isActive(), f"guest ignored the ACPI power button:\n{vm.console()}"
    print(f"{vm.name}: ACPI shutdown took {time.monotonic() - started:.2f}s")
    assert "cloudland-guest: powering off" in vm.console()


@pytest.mark.parametrize("base_format", ["qcow2", "raw"])
def test_vm_boots_from_an_overlay_of_the_disk_image(qemu_libvirt: QemuSession, make_vm: Callable[..., DiskGuest],
                                                    base_format: str) -> None:
    base = qemu_libvirt.guest / f"guest.{base_format}"
    base_sha = sha256(base)
    started = time.monotonic()
    vm = make_vm(base, base_format)
    wait_ready(vm, started)
    assert_booted_from_disk(vm, "/dev/sr0")
    assert qemu_processes({vm.name}) == {vm.qemu_pid: vm.name}

    acpi_shutdown(vm)
    vm.dom.undefine()
    with pytest.raises(libvirt.libvirtError):
        qemu_libvirt.conn.lookupByName(vm.name)
    assert qemu_processes({vm.name}) == {}
    assert not Path(f"/proc/{vm.qemu_pid}").exists()
    assert sha256(base) == base_sha


def test_two_vms_from_one_image_at_once_each_with_its_own_disk(qemu_libvirt: QemuSession,
                                                               make_vm: Callable[..., DiskGuest]) -> None:
    base = qemu_libvirt.guest / "guest.qcow2"
    base_sha = sha256(base)
    empty = sector(base, "qcow2", MARK_SECTOR)
    assert empty == bytes(512)
    # Both boot at the same time: one finds its config drive on the IDE CD-ROM, the other on
    # a second virtio disk (vdb), next to the FAT boot disk (vda) it must not take for it.
    started = time.monotonic()
    vms = [make_vm(base, "qcow2", "ide"), make_vm(base, "qcow2", "virtio")]
    for vm in vms:
        wait_ready(vm, started)
    assert_booted_from_disk(vms[0], "/dev/sr0")
    assert_booted_from_disk(vms[1], "/dev/vdb")
    assert vms[0].qemu_pid != vms[1].qemu_pid

    # Each guest writes its hostname to its own disk: the write lands in its overlay only.
    for vm in vms:
        run_on_console(vm, f"echo {vm.hostname} | dd of=/dev/vda bs=512 seek={MARK_SECTOR} conv=notrunc,sync "
                           "2>/dev/null && sync && echo written=$((40+2))", "written=42")
    for vm in vms:
        acpi_shutdown(vm)
        assert qemu_processes({vm.name}) == {}
        vm.dom.undefine()
    for vm in vms:
        assert sector(vm.overlay, "qcow2", MARK_SECTOR).startswith(f"{vm.hostname}\n".encode())
    assert sector(base, "qcow2", MARK_SECTOR) == empty
    assert sha256(base) == base_sha
