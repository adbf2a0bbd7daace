"""The vm.* operations on libvirtd + QEMU: request messages in, a booted guest out.

What the contract suite (tests/unit/test_compute_contract.py) cannot see through the
driver's verbs: the default domain type this host gets (compute_ops.kvm_usable), the
config drive on the IDE CD-ROM the spec asked for, a console that is both logged to a
file and open to a libvirt stream, and a graceful stop that really was the guest
powering itself off on the ACPI button.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import pytest

from cloudland_agents.compute import ops as compute_ops
from cloudland_agents.hypervisor import Hypervisor

pytest.register_assert_rewrite("tests.realvm.qemu_host")  # before the import: it is a plugin too
from tests.unit.test_compute_ops import run as unit_run  # noqa: E402
from tests.realvm.qemu_host import URI, QemuHost, console_echo, qemu_processes  # noqa: E402

pytest_plugins = ["tests.realvm.qemu_host"]
pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.realvm]

STOP_TIMEOUT_S = 30.0


def run(hv: Hypervisor, name: str, args: dict[str, Any]) -> dict[str, Any]:
    """As the leaf runs an operation: its request message, its result read back (tests/unit)."""
    return unit_run(hv, name, args)


def test_vm_operations_boot_the_guest_and_stop_it_by_acpi(qemu_host: QemuHost) -> None:
    hv = Hypervisor(8, URI, "realvm-host")
    try:
        spec = qemu_host.spec("ops-1")
        args = {key: value for key, value in asdict(spec).items() if key != "domain_type"}  # the default
        created = run(hv, "vm.create", args)
        assert (created["created"], created["state"]) == (True, "running")
        assert created["domain_type"] == ("kvm" if compute_ops.kvm_usable() else "qemu")
        assert created["console_log"] == spec.console_log
        assert [d["device"] for d in created["disks"]] == ["disk", "cdrom"]

        qemu_host.wait_boots("ops-1", 1)
        console = qemu_host.console("ops-1")
        assert "cloudland-guest: config-drive=/dev/sr0" in console  # the IDE CD-ROM
        assert "cloudland-guest: hostname=ops-1" in console

        # The same serial port is a pty: a libvirt stream attaches while virtlogd keeps logging.
        dom = hv.conn.lookupByName("ops-1")
        echoed = console_echo(dom, b"echo sum=$((6*7))", b"sum=42")
        assert b"sum=42" in echoed, echoed
        assert "sum=42" in qemu_host.console("ops-1")

        started = time.monotonic()
        stopped = run(hv, "vm.stop", {"name": "ops-1", "timeout_s": STOP_TIMEOUT_S})
        took = time.monotonic() - started
        print(f"ops-1: ACPI stop took {took:.2f}s")
        assert stopped["state"] == "shutoff"
        assert took < STOP_TIMEOUT_S and "cloudland-guest: powering off" in qemu_host.console("ops-1")
        assert qemu_processes({"ops-1"}) == {}

        # A shut-off VM is started by a reboot; its console log keeps the first boot.
        assert run(hv, "vm.reboot", {"name": "ops-1"})["state"] == "running"
        qemu_host.wait_boots("ops-1", 2)
        assert run(hv, "vm.delete", {"name": "ops-1"}) == {"name": "ops-1", "deleted": True, "files_removed": False}
        assert qemu_processes({"ops-1"}) == {}
        assert "ops-1" not in {vm["name"] for vm in run(hv, "vm.list", {})["vms"]}
    finally:
        hv.close()
