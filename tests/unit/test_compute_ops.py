"""The vm.* operations (agents/compute/ops.py): request messages in, result messages out
(proto/v1/compute.proto), on real simulated hypervisors; no MPI.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from google.protobuf.json_format import ParseError

from cloudland.errors import DriverError, InvalidRequest
from cloudland_agents import ops
from cloudland_agents.compute import ops as compute_ops
from cloudland_agents.compute.driver import LibvirtCompute, VMNotFound, VMStateError
from cloudland_agents.compute.fake import FakeCompute
from cloudland_agents.images import ops as image_ops  # noqa: F401 - registers image.evict
from cloudland_agents.hypervisor import Hypervisor, open_simulated
from cloudland_proto.v1 import compute_pb2 as cpb
from tests.unit.agentcall import call, request

VM_OPS = ["vm.create", "vm.start", "vm.stop", "vm.reboot", "vm.delete", "vm.resize", "vm.rebuild", "vm.capture", "vm.get",
          "vm.list", "image.evict"]
UUID = "0b8f6a52-1c3d-4e5f-8a9b-0c1d2e3f4a5b"
CREATE = {"name": "web-1", "uuid": UUID, "vcpus": 2, "memory_mib": 512,
          "disks": [{"path": "/images/web-1.qcow2"}], "nics": [{"bridge": "br0", "mac": "52:54:00:00:00:01"}],
          "metadata": {"tenant": "t1"}}


@pytest.fixture
def hv(tmp_path: Path) -> Iterator[Hypervisor]:
    hypervisor = open_simulated(5, tmp_path)
    yield hypervisor
    hypervisor.close()


def run(hv: Hypervisor, name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ``name`` as the leaf would: a create's or rebuild's spec fields flat in ``args`` (its
    ``guest`` beside them). The result as a dict, a VM record's fields flat beside the others."""
    fields = dict(args or {})
    if name in ("vm.create", "vm.rebuild"):
        guest = fields.pop("guest", None)
        fields = {"spec": fields} | ({"guest": guest} if guest is not None else {})
    result = call(ops.Context(hv, "job-1", 0.0, lambda _b: None), name, fields)
    record = result.pop("vm", None) or {}
    return {**record, **result}


@pytest.mark.parametrize("name", VM_OPS)
def test_registered_on_worker_threads(name: str) -> None:
    """libvirt calls can block, so no vm.* operation may run on the MPI thread."""
    op = ops.lookup(name, test_ops=False)
    assert op is not None and not op.inline and not op.test_only
    assert "dempotent" in (op.run.__doc__ or "") or name in {"vm.get", "vm.list"}


def test_lifecycle_through_the_operations(hv: Hypervisor) -> None:
    created = run(hv, "vm.create", CREATE)
    assert (created["created"], created["state"], created["domain_type"]) == (True, "running", "test")
    assert run(hv, "vm.create", CREATE)["created"] is False
    assert [v["name"] for v in run(hv, "vm.list")["vms"]] == ["web-1"]
    assert run(hv, "vm.stop", {"name": "web-1", "timeout_s": 5.0})["state"] == "shutoff"
    resized = run(hv, "vm.resize", {"name": "web-1", "vcpus": 4, "memory_mib": 1024})
    assert (resized["vcpus"], resized["memory_mib"]) == (4, 1024)
    assert run(hv, "vm.start", {"name": "web-1"})["state"] == "running"
    assert run(hv, "vm.reboot", {"name": "web-1", "force": True})["state"] == "running"
    assert run(hv, "vm.reboot", {"name": "web-1", "timeout_s": 5.0})["state"] == "running"
    rebuilt = run(hv, "vm.rebuild", {**CREATE, "disks": [{"path": "/images/web-1-v2.raw", "format": "raw"}]})
    assert rebuilt["disks"] == [{"path": "/images/web-1-v2.raw", "format": "raw", "target": "vda", "device": "disk"}]
    assert run(hv, "vm.get", {"name": "web-1"})["uuid"] == UUID
    assert run(hv, "vm.delete", {"name": "web-1"}) == {"name": "web-1", "deleted": True, "files_removed": False}
    assert run(hv, "vm.delete", {"name": "web-1"}) == {"name": "web-1", "deleted": False, "files_removed": False}
    assert run(hv, "vm.list") == {"vms": []}


def test_direct_kernel_boot_and_devices(hv: Hypervisor) -> None:
    """Boot fields pass through; a disk without a target gets the first free one of its bus
    (vda, vdb... for disks, hdc, hdd... for CD-ROMs); disks come back in libvirt's order."""
    boot = {"kernel": "/guest/vmlinuz", "initrd": "/guest/initrd.img", "cmdline": "console=ttyS0 quiet",
            "console_log": "/var/log/cloudland/web-1.log"}
    disks = [{"path": "/images/web-1.qcow2"}, {"path": "/drives/web-1.iso", "device": "cdrom"},
             {"path": "/images/data.raw", "format": "raw", "device": "disk"},
             {"path": "/drives/tools.iso", "device": "cdrom", "target": "hda"},
             {"path": "/drives/more.iso", "device": "cdrom"}]
    created = run(hv, "vm.create", {**CREATE, **boot, "disks": disks})
    assert {key: created[key] for key in boot} == boot
    assert [(d["path"], d["target"], d["device"], d["format"]) for d in created["disks"]] == [
        ("/images/web-1.qcow2", "vda", "disk", "qcow2"), ("/images/data.raw", "vdb", "disk", "raw"),
        ("/drives/tools.iso", "hda", "cdrom", "raw"), ("/drives/web-1.iso", "hdc", "cdrom", "raw"),
        ("/drives/more.iso", "hdd", "cdrom", "raw")]
    assert run(hv, "vm.get", {"name": "web-1"}) == {k: v for k, v in created.items()
                                                    if k not in ("created", "image_downloaded")}


def test_vnc_display_through_the_operations(hv: Hypervisor) -> None:
    """A spec's display reads back, and a resize (redefined from the record) keeps it."""
    created = run(hv, "vm.create", {**CREATE, "vnc_listen": "0.0.0.0"})
    assert (created["vnc_listen"], created["vnc_port"]) == ("0.0.0.0", 0)  # test:/// runs no display
    run(hv, "vm.stop", {"name": "web-1", "force": True})
    assert run(hv, "vm.resize", {"name": "web-1", "vcpus": 4, "memory_mib": 1024})["vnc_listen"] == "0.0.0.0"
    assert run(hv, "vm.get", {"name": "web-1"})["vnc_listen"] == "0.0.0.0"
    assert run(hv, "vm.list")["vms"][0]["vnc_port"] == 0


@pytest.mark.parametrize(
    ("uri", "args", "vnc_listen"),
    [
        ("qemu:///system", {}, "192.0.2.10"),  # a real guest gets the hypervisor's address
        ("qemu:///system", {"vnc_listen": "::1"}, "::1"),  # unless the arguments name one...
        ("qemu:///system", {"vnc_listen": ""}, "192.0.2.10"),  # ...an empty one is unset
        ("test:///default", {}, ""),  # a simulated guest has no display
    ],
)
def test_real_guests_get_the_hypervisors_vnc_address(monkeypatch: pytest.MonkeyPatch, uri: str,
                                                     args: dict[str, Any], vnc_listen: str) -> None:
    files = SimpleNamespace(disks=(), console_log=Path("/var/lib/cloudland/guests/x/console.log"))
    monkeypatch.setattr(compute_ops, "_prepare_guest", lambda *_args: files)
    monkeypatch.setattr(compute_ops, "kvm_usable", lambda: False)
    ctx = SimpleNamespace(hypervisor=SimpleNamespace(uri=uri, vnc_listen="192.0.2.10"))
    message = request("vm.create", {"spec": {**CREATE, **args}}).spec  # type: ignore[attr-defined]
    spec, prepared, _nics = compute_ops._guest_spec(ctx, message, cpb.Guest(), "disk.qcow2")  # type: ignore[arg-type]
    assert spec.vnc_listen == vnc_listen
    assert (prepared is files) == uri.startswith("qemu:")


def test_results_are_their_messages(hv: Hypervisor) -> None:
    """A result goes up as its message: every record must be representable, whole numbers whole."""
    ctx = ops.Context(hv, "job-1", 0.0, lambda _b: None)
    created = compute_ops.vm_create(ctx, request("vm.create", {"spec": CREATE}))  # type: ignore[arg-type]
    assert isinstance(created, cpb.VmCreateResult) and dict(created.vm.metadata) == {"tenant": "t1"}
    listed = compute_ops.vm_list(ctx, cpb.VmListRequest())
    assert listed.vms[0].vcpus == 2 and listed.vms[0].disks[0].target == "vda"


@pytest.mark.parametrize(
    ("name", "args", "field"),
    [
        ("vm.create", {k: v for k, v in CREATE.items() if k != "uuid"}, "uuid"),
        ("vm.create", {k: v for k, v in CREATE.items() if k != "name"}, "name"),
        ("vm.create", {**CREATE, "vcpus": 0}, "vcpus"),
        ("vm.create", {**CREATE, "nics": [{"bridge": "br0"}]}, "nics[0].mac"),
        ("vm.create", {**CREATE, "disks": [{"path": "/a", "device": "tape"}]}, "disks[0].device"),
        ("vm.create", {**CREATE, "disks": [{"path": "/a.iso", "device": "cdrom", "target": "vdb"}]},
         "disks[0].target"),
        ("vm.create", {**CREATE, "kernel": "boot/vmlinuz"}, "kernel"),
        ("vm.create", {**CREATE, "cmdline": "quiet"}, "cmdline"),  # no kernel to pass it to
        ("vm.create", {**CREATE, "console_log": "/var/log/a\0b"}, "console_log"),
        ("vm.create", {**CREATE, "vnc_listen": "localhost"}, "vnc_listen"),
        ("vm.stop", {"name": "web-1", "timeout_s": -1}, "timeout_s"),
        ("vm.start", {}, "name"),
        ("vm.resize", {"name": "web-1", "vcpus": 2}, "memory_mib"),
    ],
)
def test_bad_arguments_name_the_field(hv: Hypervisor, name: str, args: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest, match=field.replace("[", r"\[").replace("]", r"\]")):
        run(hv, name, args)
    assert run(hv, "vm.list") == {"vms": []}  # refused before any work


@pytest.mark.parametrize(
    ("name", "args", "field"),
    [
        ("vm.create", {"spec": {**CREATE, "vcpu": 2}}, "vcpu"),
        ("vm.create", {"spec": {**CREATE, "vcpus": 2.5}}, "vcpus"),
        ("vm.create", {"spec": {**CREATE, "name": 7}}, "name"),
        ("vm.create", {"spec": {**CREATE, "disks": [{"path": "/a", "size": 1}]}}, "size"),
        ("vm.create", {"spec": {**CREATE, "disks": "/a"}}, "disks"),
        ("vm.create", {"spec": {**CREATE, "metadata": "x"}}, "metadata"),
        ("vm.create", {"spec": {**CREATE, "disks": [{"path": "/a", "device": 1}]}}, "device"),
        ("vm.create", {"spec": {**CREATE, "disks": [{"path": "/a", "format": 2}]}}, "format"),
        ("vm.create", {"spec": {**CREATE, "kernal": "/boot/vmlinuz"}}, "kernal"),
        ("vm.create", {"spec": {**CREATE, "kernel": 1}}, "kernel"),
        ("vm.create", {"spec": {**CREATE, "vnc_listen": 127}}, "vnc_listen"),
        ("vm.create", {**CREATE}, "name"),  # a spec's fields are not the request's
        ("vm.stop", {"name": "web-1", "force": "yes"}, "force"),
        ("vm.reboot", {"name": "web-1", "timeout_s": "soon"}, "timeout_s"),
        ("vm.get", {"name": "web-1", "extra": 1}, "extra"),
        ("vm.list", {"all": True}, "all"),
    ],
)
def test_arguments_of_the_wrong_shape_cannot_even_be_sent(name: str, args: dict[str, Any], field: str) -> None:
    """What the Struct once let through and the operations had to refuse, the messages refuse."""
    with pytest.raises(ParseError, match=field):
        request(name, args)


def test_driver_errors_name_vm_and_hypervisor(hv: Hypervisor) -> None:
    with pytest.raises(VMNotFound, match=r"VM 'ghost' not found \(hypervisor 5\)"):
        run(hv, "vm.get", {"name": "ghost"})
    run(hv, "vm.create", CREATE)
    with pytest.raises(VMStateError, match="hypervisor 5"):
        run(hv, "vm.resize", {"name": "web-1", "vcpus": 4, "memory_mib": 1024})


@pytest.mark.parametrize(
    ("uri", "kvm", "expected"),
    [("test:///default", True, "test"), ("qemu:///system", True, "kvm"), ("qemu:///system", False, "qemu")],
)
def test_default_domain_type(monkeypatch: pytest.MonkeyPatch, uri: str, kvm: bool, expected: str) -> None:
    monkeypatch.setattr(compute_ops, "kvm_usable", lambda: kvm)
    ctx = SimpleNamespace(hypervisor=SimpleNamespace(uri=uri))
    assert compute_ops._default_domain_type(ctx) == expected  # type: ignore[arg-type]


def test_kvm_is_unusable_without_a_kvm_device(tmp_path: Path) -> None:
    assert compute_ops.kvm_usable(str(tmp_path / "no-kvm")) is False
    assert compute_ops.kvm_usable("/dev/null") is False  # opens, but answers no KVM ioctl


@pytest.mark.parametrize(
    ("cpuinfo", "found"),
    [
        ("processor\t: 0\nflags\t\t: fpu vme sse3 vmx ept\n", {"vmx"}),
        ("flags\t\t: fpu svm\nflags\t\t: fpu svm\n", {"svm"}),
        ("flags\t\t: fpu pni ssse3 hypervisor\n", set()),  # a VM without nested virtualisation
        ("processor\t: 0\nFeatures\t: fp asimd\n", set()),  # no x86 flags line at all
    ],
)
def test_hardware_virtualization_flags(cpuinfo: str, found: set[str]) -> None:
    assert compute_ops.hardware_virtualization(cpuinfo) == found


def test_one_driver_per_hypervisor(hv: Hypervisor, tmp_path: Path) -> None:
    first = compute_ops.driver_for(hv)
    assert isinstance(first, LibvirtCompute) and compute_ops.driver_for(hv) is first
    other = open_simulated(5, tmp_path / "other")  # same id, another host: its own driver
    try:
        assert compute_ops.driver_for(other) is not first
    finally:
        other.close()


def test_a_fake_driver_can_stand_in(hv: Hypervisor) -> None:
    fake = FakeCompute(hv.id)
    compute_ops.use_driver(hv, fake)
    fake.fail_next("create", DriverError(hv.id, "disk full"))
    with pytest.raises(DriverError, match="disk full"):
        run(hv, "vm.create", CREATE)
    assert run(hv, "vm.create", CREATE)["created"] is True
    assert [verb for verb, _ in fake.calls] == ["create", "create"]
    assert fake.calls[0][1][0].vcpus == 2  # the float 2.0 arrived as an int
    assert hv.conn.listAllDomains() == []  # nothing reached libvirt
