"""One contract suite, three drivers: FakeCompute, LibvirtCompute on a simulated hypervisor
(test:///) and LibvirtCompute on libvirtd + QEMU booting real guests (qemu:///system, TCG).

Every test here states a postcondition of agents/compute/driver.py's docstring; every driver
must meet it (nova's fake/real pairing, ARCHITECTURE.md "Drivers"). A ``Host`` gives
each driver what its VMs need: real guests boot a kernel from files that exist, on a
bridge that exists (tests/realvm/qemu_host.py, marked realvm/slow/root). Tests whose
subject is not a graceful stop stop with force=True: a real guest takes seconds to
boot and hear the ACPI button, and test_stop_start_reboot covers that path.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Protocol

import libvirt
import pytest

from cloudland.errors import CloudLandError, DriverError, InvalidRequest
from cloudland_agents.compute.driver import (
    Compute, Disk, DomainSpec, LibvirtCompute, Nic, VMConflict, VMNotFound, VMStateError,
)
from cloudland_agents.compute.fake import FakeCompute
from cloudland_agents.compute.domain import spec_of_record
from cloudland_agents.hypervisor import open_simulated

pytest.register_assert_rewrite("tests.realvm.qemu_host")  # before the import: it is a plugin too
from tests.realvm.qemu_host import guest_mac, guest_uuid  # noqa: E402

pytest_plugins = ["tests.realvm.qemu_host"]  # the "qemu" host's fixtures, started only when asked for

HV = 3


class Host(Protocol):
    """A hypervisor under test: its driver, and specs and disks its VMs can run with."""

    compute: Compute
    vms_at_once: int  # the concurrency tests' scale
    power_cycles: int
    serves_vnc: bool  # a running VM's VNC display has a port (test:/// runs no guest: it has none)

    def spec(self, name: str = "web-1", **changes: Any) -> DomainSpec: ...
    def disk(self, name: str, fmt: str = "qcow2") -> Disk: ...
    def wait_boots(self, name: str, count: int) -> None: ...
    def names(self) -> list[str]: ...


class SimulatedHost:
    """Fake or test:/// VMs: nothing is opened, so any absolute path and bridge will do."""

    vms_at_once = 20
    power_cycles = 10

    def __init__(self, compute: Compute, serves_vnc: bool = False) -> None:
        self.compute = compute
        self.serves_vnc = serves_vnc

    def disk(self, name: str, fmt: str = "qcow2") -> Disk:
        return Disk(f"/var/lib/cloudland/images/{name}.{fmt}", fmt, "vda")

    def spec(self, name: str = "web-1", **changes: Any) -> DomainSpec:
        base = DomainSpec(name=name, uuid=guest_uuid(name), vcpus=2, memory_mib=512, disks=(self.disk(name),),
                          nics=(Nic("br-tenant1", guest_mac(name)),), metadata={"tenant": "t1"})
        return replace(base, **changes)

    def wait_boots(self, name: str, count: int) -> None:
        """No guest runs, so there is no boot to wait for."""

    def names(self) -> list[str]:
        return sorted(r["name"] for r in self.compute.list())


HOSTS = ["fake", "libvirt", pytest.param("qemu", marks=[pytest.mark.realvm, pytest.mark.slow, pytest.mark.root])]


@pytest.fixture(params=HOSTS)
def host(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Host]:
    if request.param == "fake":
        yield SimulatedHost(FakeCompute(HV), serves_vnc=True)  # the fake gives ports as QEMU does
    elif request.param == "libvirt":
        hv = open_simulated(HV, tmp_path)
        # A short poll: the test driver's graceful shutdown is immediate anyway.
        yield SimulatedHost(LibvirtCompute(hv.conn, hv.id, poll_s=0.01))
        hv.close()
    else:
        yield request.getfixturevalue("qemu_host")  # deletes its VMs and checks no QEMU is left


@pytest.fixture
def compute(host: Host) -> Compute:
    return host.compute


@pytest.fixture
def spec(host: Host) -> Any:
    """``spec(name="web-1", **changes)``: a VM spec for this host."""
    return host.spec


def test_create_runs_the_vm(compute: Compute, spec: Any) -> None:
    record = compute.create(spec())
    assert record["created"] is True
    assert (record["name"], record["uuid"], record["state"]) == ("web-1", spec().uuid, "running")
    assert (record["vcpus"], record["memory_mib"], record["metadata"]) == (2, 512, {"tenant": "t1"})
    assert record["disks"] == [asdict(disk) for disk in spec().disks]
    assert record["nics"] == [asdict(nic) for nic in spec().nics]
    assert spec_of_record(record) == spec()  # everything the spec said reads back
    assert compute.get("web-1")["state"] == "running"


def test_create_again_is_idempotent(host: Host, compute: Compute, spec: Any) -> None:
    compute.create(spec())
    compute.stop("web-1", force=True)
    again = compute.create(spec(vcpus=4))  # a replay: the existing VM is left as is
    assert again["created"] is False
    assert (again["state"], again["vcpus"]) == ("shutoff", 2)
    assert host.names() == ["web-1"]


def test_create_conflicts_on_name_or_uuid_held_by_another_vm(host: Host, compute: Compute, spec: Any) -> None:
    compute.create(spec())
    with pytest.raises(VMConflict, match="web-1"):
        compute.create(spec(uuid=str(uuid.uuid4())))
    with pytest.raises(VMConflict, match=f"hypervisor {HV}"):
        compute.create(spec(name="web-2", uuid=spec().uuid))
    assert host.names() == ["web-1"]


def test_stop_start_reboot(host: Host, compute: Compute, spec: Any) -> None:
    compute.create(spec())
    host.wait_boots("web-1", 1)  # a real guest hears the ACPI button once it has booted
    assert compute.stop("web-1")["state"] == "shutoff"
    assert compute.stop("web-1", force=True)["state"] == "shutoff"  # already off: success
    assert compute.start("web-1")["state"] == "running"
    assert compute.start("web-1")["state"] == "running"  # already running: success
    host.wait_boots("web-1", 2)
    assert compute.reboot("web-1")["state"] == "running"
    host.wait_boots("web-1", 3)  # it has restarted since the call
    assert compute.reboot("web-1", force=True)["state"] == "running"
    host.wait_boots("web-1", 4)
    assert compute.stop("web-1", force=True)["state"] == "shutoff"
    assert compute.reboot("web-1")["state"] == "running"  # a shut-off VM is started


def test_resize_a_stopped_vm(compute: Compute, spec: Any) -> None:
    compute.create(spec())
    compute.stop("web-1", force=True)
    record = compute.resize("web-1", 4, 2048)
    assert (record["vcpus"], record["memory_mib"], record["state"]) == (4, 2048, "shutoff")
    assert record["uuid"] == spec().uuid and record["disks"] == compute.get("web-1")["disks"]
    assert compute.start("web-1")["vcpus"] == 4


def test_resize_a_running_vm_is_refused(compute: Compute, spec: Any) -> None:
    compute.create(spec())
    with pytest.raises(VMStateError, match="shut off"):
        compute.resize("web-1", 4, 2048)
    assert compute.get("web-1")["vcpus"] == 2


def test_resize_validates_the_size(compute: Compute, spec: Any) -> None:
    compute.create(spec())
    compute.stop("web-1", force=True)
    with pytest.raises(InvalidRequest, match="memory_mib"):
        compute.resize("web-1", 2, 1)
    assert compute.get("web-1")["memory_mib"] == 512


def test_rebuild_keeps_name_and_uuid(host: Host, compute: Compute, spec: Any) -> None:
    compute.create(spec())
    # A new boot disk; the real guest's config drive stays.
    rebuilt = spec(disks=(host.disk("web-1-v2", "raw"), *spec().disks[1:]))
    record = compute.rebuild(rebuilt)
    assert (record["name"], record["uuid"], record["state"]) == ("web-1", spec().uuid, "running")
    assert record["disks"][0] == {"path": rebuilt.disks[0].path, "format": "raw", "target": "vda", "device": "disk"}
    assert spec_of_record(record) == rebuilt
    compute.stop("web-1", force=True)
    assert compute.rebuild(spec())["state"] == "shutoff"  # power state is kept
    with pytest.raises(VMConflict, match="uuid"):
        compute.rebuild(spec(uuid=str(uuid.uuid4())))
    with pytest.raises(VMNotFound):
        compute.rebuild(spec(name="nope"))


def test_vnc_display_keeps_its_address_and_has_a_port_while_running(host: Host, compute: Compute,
                                                                   spec: Any) -> None:
    """The display's address reads back and survives a resize (a redefine from the record);
    its port is a live display's while the VM runs, and 0 once it is off."""
    def port_while_running(record: Any) -> int:
        port: int = record["vnc_port"]
        assert port >= 5900 if host.serves_vnc else port == 0, record
        return port

    vnc = spec(vnc_listen="127.0.0.1")
    record = compute.create(vnc)
    assert record["vnc_listen"] == "127.0.0.1" and spec_of_record(record) == vnc
    assert compute.create(vnc)["created"] is False  # a replay of the spec it made is that VM
    first = port_while_running(record)
    second = port_while_running(compute.create(spec("web-2", vnc_listen="127.0.0.1")))
    assert first != second or not host.serves_vnc
    assert compute.get("web-1")["vnc_port"] == first
    stopped = compute.stop("web-1", force=True)
    assert (stopped["vnc_listen"], stopped["vnc_port"]) == ("127.0.0.1", 0)
    resized = compute.resize("web-1", 4, 1024)
    assert spec_of_record(resized) == replace(vnc, vcpus=4, memory_mib=1024)  # the display stays
    port_while_running(compute.start("web-1"))
    plain = compute.rebuild(spec(vcpus=4, memory_mib=1024))  # rebuilt without a display
    assert (plain["state"], plain["vnc_listen"], plain["vnc_port"]) == ("running", "", 0)


def test_fake_vnc_ports_are_the_lowest_free_as_qemus_autoport() -> None:
    fake = FakeCompute(HV)
    spec = SimulatedHost(fake).spec
    ports = [fake.create(spec(f"vm-{i}", vnc_listen="::1"))["vnc_port"] for i in range(3)]
    assert ports == [5900, 5901, 5902]
    assert fake.create(spec("plain"))["vnc_port"] == 0  # no display
    fake.stop("vm-0")
    assert fake.get("vm-0")["vnc_port"] == 0
    assert fake.reboot("vm-1")["vnc_port"] == 5901  # the same display keeps its port
    fake.delete("vm-2")
    assert fake.create(spec("vm-3", vnc_listen="::1"))["vnc_port"] == 5900
    assert fake.start("vm-0")["vnc_port"] == 5902


def test_delete_is_idempotent(host: Host, compute: Compute, spec: Any) -> None:
    compute.create(spec())
    assert compute.delete("web-1") == {"name": "web-1", "deleted": True}
    assert host.names() == []
    assert compute.delete("web-1") == {"name": "web-1", "deleted": False}
    compute.create(spec())  # the same uuid can be created again after delete
    assert host.names() == ["web-1"]


def test_get_of_a_missing_vm_names_vm_and_hypervisor(compute: Compute) -> None:
    with pytest.raises(VMNotFound) as caught:
        compute.get("ghost")
    assert isinstance(caught.value, DriverError) and isinstance(caught.value, CloudLandError)
    assert "'ghost'" in str(caught.value) and f"hypervisor {HV}" in str(caught.value)
    assert caught.value.hypervisor == HV
    for verb in (compute.start, compute.stop, compute.reboot):
        with pytest.raises(VMNotFound, match="ghost"):
            verb("ghost")


def test_concurrent_creates_of_different_vms(host: Host, compute: Compute, spec: Any) -> None:
    errors: list[BaseException] = []
    count = host.vms_at_once
    barrier = threading.Barrier(count)
    specs = [spec(f"vm-{i:02d}") for i in range(count)]  # made first: a real host writes files

    def create(i: int) -> None:
        try:
            barrier.wait()
            compute.create(specs[i])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    records = {r["name"]: r for r in compute.list()}
    assert host.names() == [f"vm-{i:02d}" for i in range(count)]
    assert {records[name]["state"] for name in host.names()} == {"running"}


def test_concurrent_verbs_on_one_vm_are_serialised(host: Host, compute: Compute, spec: Any) -> None:
    compute.create(spec())
    errors: list[BaseException] = []

    def cycle() -> None:
        try:
            for _ in range(host.power_cycles):
                compute.stop("web-1", force=True)
                compute.start("web-1")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=cycle) for _ in range(min(4, host.power_cycles))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert compute.get("web-1")["state"] == "running"


def test_fake_fail_next_fails_exactly_the_next_call() -> None:
    fake = FakeCompute(HV)
    spec = SimulatedHost(fake).spec
    fake.create(spec())
    fake.stop("web-1")
    error = DriverError(HV, "injected")
    fake.fail_next("start", error)
    with pytest.raises(DriverError, match="injected") as caught:
        fake.start("web-1")
    assert caught.value is error
    assert fake.get("web-1")["state"] == "shutoff"  # the failed start did nothing
    assert fake.start("web-1")["state"] == "running"
    assert [verb for verb, _ in fake.calls] == ["create", "stop", "start", "get", "start"]
    assert fake.calls[2] == ("start", ("web-1",))


class PoweringOffDomain:
    """A domain whose states follow a script, one per look; libvirt refuses an ACPI press
    unless the domain is running ("domain is not running"), as it does while a guest powers off."""

    def __init__(self, *states: int) -> None:
        self.states = list(states)
        self.presses = 0

    def state(self) -> list[int]:
        return [self.states.pop(0) if len(self.states) > 1 else self.states[0], 0]

    def isActive(self) -> bool:  # noqa: N802 - libvirt's name
        return self.states[0] != libvirt.VIR_DOMAIN_SHUTOFF

    def shutdown(self) -> None:
        self.presses += 1
        raise libvirt.libvirtError("Requested operation is not valid: domain is not running")


@pytest.mark.parametrize(
    ("states", "refused"),
    [
        # The guest began to power off between the look and the press: that is the goal.
        ((libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_SHUTDOWN, libvirt.VIR_DOMAIN_SHUTDOWN,
          libvirt.VIR_DOMAIN_SHUTOFF), False),
        ((libvirt.VIR_DOMAIN_RUNNING,), True),  # still running: the refusal is real
    ],
)
def test_libvirt_refusing_a_press_while_the_guest_powers_off_is_no_error(states: tuple[int, ...],
                                                                         refused: bool) -> None:
    driver = LibvirtCompute(None, HV, poll_s=0, shutdown_retry_s=0)  # type: ignore[arg-type]
    dom = PoweringOffDomain(*states)
    if refused:
        with pytest.raises(DriverError, match="shutdown of VM 'web-1' failed: .* not running"):
            driver._stop(dom, "web-1", force=False, timeout=5)  # type: ignore[arg-type]
    else:
        driver._stop(dom, "web-1", force=False, timeout=5)  # type: ignore[arg-type]
        assert (dom.presses, dom.isActive()) == (1, False)


def test_a_nic_is_attached_and_detached_with_its_tap_name_and_mtu(host: Host, compute: Compute, spec: Any) -> None:
    """Hot-plug on QEMU; the test driver, which cannot, defines the domain again: either way the VM
    runs on with the NIC (its tap named, its MTU set), then without it; a replay changes nothing."""
    compute.create(spec())
    host.wait_boots("web-1", 1)  # a guest that runs answers the unplug (ACPI PCI hotplug)
    nic = Nic(spec().nics[0].bridge, "02:c1:00:00:0a:01", "zzt00000a01", 1450)
    record, attached = compute.attach_nic("web-1", nic)
    assert attached and record["state"] == "running"
    assert [n["mac"] for n in record["nics"]] == [spec().nics[0].mac, nic.mac]
    assert record["nics"][-1] == asdict(nic)
    assert compute.attach_nic("web-1", nic)[1] is False
    record, detached = compute.detach_nic("web-1", nic.mac)
    assert detached and [n["mac"] for n in record["nics"]] == [spec().nics[0].mac]
    assert record["state"] == "running"
    assert compute.detach_nic("web-1", nic.mac)[1] is False
