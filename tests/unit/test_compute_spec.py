"""DomainSpec validation (a table) and domain XML (parsed back, checked by element)."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any
from xml.etree import ElementTree as ET

import libvirt
import pytest

from cloudland.errors import InvalidRequest
from cloudland_agents.compute.driver import Disk, DomainSpec, Nic, domain_xml, parse_domain_xml
from cloudland_agents.compute.domain import METADATA_NS, spec_of_record

UUID = "6f1d2c3b-4a5e-4f60-8172-93a4b5c6d7e8"
GOOD = DomainSpec(name="web-1", uuid=UUID, vcpus=2, memory_mib=512)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "-leading-dash"}, "name"),
        ({"name": "has space"}, "name"),
        ({"name": "x" * 65}, "name"),
        ({"name": "a/b"}, "name"),
        ({"uuid": "not-a-uuid"}, "uuid"),
        ({"uuid": "6f1d2c3b4a5e4f60817293a4b5c6d7e8"}, "uuid"),  # valid hex, not the canonical form
        ({"vcpus": 0}, "vcpus"),
        ({"vcpus": 257}, "vcpus"),
        ({"vcpus": 2.0}, "vcpus"),
        ({"vcpus": True}, "vcpus"),
        ({"memory_mib": 63}, "memory_mib"),
        ({"memory_mib": 4 * 1024 * 1024 + 1}, "memory_mib"),
        ({"arch": "sparc"}, "arch"),
        ({"domain_type": "xen"}, "domain_type"),
        ({"disks": (Disk("relative.qcow2"),)}, "disks[0].path"),
        ({"disks": (Disk("/a\0b.img"),)}, "disks[0].path"),
        ({"disks": (Disk("/a\nb.img"),)}, "disks[0].path"),  # XML cannot carry it
        ({"disks": (Disk("/" + "x" * 4095),)}, "disks[0].path"),
        ({"disks": (Disk("/a.img", "vmdk"),)}, "disks[0].format"),
        ({"disks": (Disk("/a.img", "raw", "xvda"),)}, "disks[0].target"),
        ({"disks": (Disk("/a.img", "raw", "sda"),)}, "disks[0].target"),  # a disk is virtio
        ({"disks": (Disk("/a.img", "raw", "hdc"),)}, "disks[0].target"),
        ({"disks": (Disk("/c.iso", "raw", "vdb", "cdrom"),)}, "disks[0].target"),  # a cdrom is IDE
        ({"disks": (Disk("/c.iso", "raw", "hde", "cdrom"),)}, "disks[0].target"),  # two IDE buses
        ({"disks": (Disk("/c.iso", "raw", "hdc", "floppy"),)}, "disks[0].device"),
        ({"disks": (Disk("/a.img"), Disk("/b.img"))}, "disks"),  # both vda
        ({"disks": (Disk("/c.iso", "raw", "hdc", "cdrom"), Disk("/d.iso", "raw", "hdc", "cdrom"))}, "disks"),
        ({"nics": (Nic("bridge-name-too-long", "52:54:00:00:00:01"),)}, "nics[0].bridge"),
        ({"nics": (Nic("br0", "52:54:00:00:00:0G"),)}, "nics[0].mac"),
        ({"nics": (Nic("br0", "52:54:00:AA:00:01"),)}, "nics[0].mac"),  # upper case
        ({"nics": (Nic("br0", "01:00:5e:00:00:01"),)}, "nics[0].mac"),  # multicast
        ({"nics": (Nic("br0", "52:54:00:00:00:01"), Nic("br1", "52:54:00:00:00:01"))}, "nics"),
        ({"nics": (Nic("br0", "52:54:00:00:00:01", "a-tap-name-too-long"),)}, "nics[0].target"),
        ({"nics": (Nic("br0", "52:54:00:00:00:01", "", 100),)}, "nics[0].mtu"),
        ({"metadata": {"1bad": "x"}}, "metadata"),
        ({"metadata": {"tenant": 7}}, "metadata.tenant"),
        ({"metadata": {"tenant": "x" * 1025}}, "metadata.tenant"),
        ({"kernel": "vmlinuz"}, "kernel"),
        ({"kernel": "/boot/vmlinuz\0"}, "kernel"),
        ({"kernel": 7}, "kernel"),
        ({"kernel": "/k", "initrd": "initrd.img"}, "initrd"),
        ({"initrd": "/boot/initrd.img"}, "initrd"),  # without a kernel
        ({"cmdline": "console=ttyS0"}, "cmdline"),  # without a kernel
        ({"kernel": "/k", "cmdline": "console=ttyS0\ninit=/bin/sh"}, "cmdline"),
        ({"kernel": "/k", "cmdline": "x" * 2048}, "cmdline"),
        ({"kernel": "/k", "cmdline": None}, "cmdline"),
        ({"console_log": "console.log"}, "console_log"),
        ({"console_log": "/var/log/\x7f.log"}, "console_log"),
        ({"vnc_listen": "localhost"}, "vnc_listen"),  # an address, not a name to resolve
        ({"vnc_listen": "127.0.0.1:5900"}, "vnc_listen"),
        ({"vnc_listen": "256.0.0.1"}, "vnc_listen"),
        ({"vnc_listen": "fe80::1%eth0"}, "vnc_listen"),  # a zone names one host's interface
        ({"vnc_listen": " 127.0.0.1"}, "vnc_listen"),
        ({"vnc_listen": "127.0.0.1'/><x"}, "vnc_listen"),
        ({"vnc_listen": None}, "vnc_listen"),
        ({"vnc_listen": 2130706433}, "vnc_listen"),
    ],
)
def test_invalid_specs_name_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest, match="^" + re.escape(f"{field!r} must be")):
        replace(GOOD, **changes)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"name": "a"},
        {"name": "x" * 64},
        {"name": "vm_1.example-2"},
        {"vcpus": 1, "memory_mib": 64},
        {"vcpus": 256, "memory_mib": 4 * 1024 * 1024},
        {"arch": "i686", "domain_type": "qemu"},
        {"domain_type": "kvm", "arch": "aarch64"},
        {"disks": (Disk("/a.qcow2"), Disk("/b.raw", "raw", "vdb"), Disk("/c.iso", "raw", "hdc", "cdrom"))},
        {"disks": tuple(Disk(f"/{t}.iso", "raw", t, "cdrom") for t in ("hda", "hdb", "hdc", "hdd"))},
        {"kernel": "/boot/vmlinuz"},
        {"kernel": "/k", "initrd": "/i", "cmdline": "x" * 2047, "console_log": "/var/log/web-1 console.log"},
        {"console_log": "/" + "x" * 4094},
        {"vnc_listen": "127.0.0.1"},
        {"vnc_listen": "0.0.0.0"},
        {"vnc_listen": "::"},
        {"vnc_listen": "2001:db8::5"},
        {"vnc_listen": "192.0.2.7", "arch": "aarch64", "domain_type": "kvm"},
    ],
)
def test_valid_specs(changes: dict[str, Any]) -> None:
    replace(GOOD, **changes)


def test_uuid_is_normalised_to_lower_case() -> None:
    assert replace(GOOD, uuid=UUID.upper()).uuid == UUID


@pytest.mark.parametrize(("given", "canonical"), [("2001:DB8:0:0::5", "2001:db8::5"), ("::0", "::"),
                                                  ("127.0.0.1", "127.0.0.1")])
def test_vnc_listen_is_normalised(given: str, canonical: str) -> None:
    """As libvirt keeps the address it is given, a spec keeps it canonical to equal its record."""
    assert replace(GOOD, vnc_listen=given).vnc_listen == canonical


def test_disks_are_kept_in_libvirts_order() -> None:
    """libvirt groups disks by bus (in order of first appearance) and sorts each bus by target:
    a spec does the same, so that it equals the spec read back from its domain."""
    shuffled = (Disk("/c.iso", "raw", "hdc", "cdrom"), Disk("/b.img", "raw", "vdaa"), Disk("/a.img", "raw", "vdb"),
                Disk("/d.iso", "raw", "hda", "cdrom"), Disk("/e.img", "raw", "vda"))
    spec = replace(GOOD, disks=shuffled)
    assert [d.target for d in spec.disks] == ["hda", "hdc", "vda", "vdb", "vdaa"]
    conn = libvirt.open("test:///default")
    try:
        dom = conn.defineXML(domain_xml(replace(GOOD, disks=shuffled, name="order-check")))
        try:
            assert spec_of_record(parse_domain_xml(dom.XMLDesc(0))) == replace(spec, name="order-check")
        finally:
            dom.undefine()
    finally:
        conn.close()


FULL = DomainSpec(
    name="db-1", uuid=UUID, vcpus=4, memory_mib=2048, domain_type="kvm",
    disks=(Disk("/images/db-1.qcow2"), Disk("/images/db-1-data.raw", "raw", "vdb"),
           Disk("/configdrives/db-1.iso", "raw", "hdc", "cdrom")),
    nics=(Nic("br-t1", "52:54:00:00:00:01", "clt00000001", 1450), Nic("br-t2", "52:54:00:00:00:02")),
    metadata={"tenant": "t1", "flavor": "m1.large <&>"},
    kernel="/guest/vmlinuz", initrd="/guest/initrd.img", cmdline="console=ttyS0 root=<&>",
    console_log="/var/log/cloudland/db-1.console.log", vnc_listen="127.0.0.1",
)


def test_domain_xml_elements() -> None:
    dom = ET.fromstring(domain_xml(FULL))
    assert dom.tag == "domain" and dom.get("type") == "kvm"
    assert (dom.findtext("name"), dom.findtext("uuid")) == ("db-1", UUID)
    memory = dom.find("memory")
    assert memory is not None and (memory.get("unit"), memory.text) == ("MiB", "2048")
    assert dom.findtext("vcpu") == "4"
    os_type = dom.find("os/type")
    assert os_type is not None
    assert (os_type.get("arch"), os_type.get("machine"), os_type.text) == ("x86_64", "pc", "hvm")
    # Direct kernel boot: no boot device.
    assert [(el.tag, el.text) for el in dom.find("os")][1:] == [  # type: ignore[union-attr]
        ("kernel", "/guest/vmlinuz"), ("initrd", "/guest/initrd.img"), ("cmdline", "console=ttyS0 root=<&>")]
    assert dom.find("features/acpi") is not None
    disks = dom.findall("devices/disk")
    assert [(d.get("device"), d.find("source").get("file"), d.find("driver").get("type"),  # type: ignore[union-attr]
             d.find("target").get("dev"), d.find("target").get("bus"), d.find("readonly") is not None)  # type: ignore[union-attr]
            for d in disks] == [("disk", "/images/db-1.qcow2", "qcow2", "vda", "virtio", False),
                                ("disk", "/images/db-1-data.raw", "raw", "vdb", "virtio", False),
                                ("cdrom", "/configdrives/db-1.iso", "raw", "hdc", "ide", True)]
    # A pty (a console stream can attach) that virtlogd also appends to the log file.
    [serial] = dom.findall("devices/serial")
    log = serial.find("log")
    assert serial.get("type") == "pty" and log is not None
    assert (log.get("file"), log.get("append")) == ("/var/log/cloudland/db-1.console.log", "on")
    assert [c.get("type") for c in dom.findall("devices/console")] == ["pty"]
    nics = dom.findall("devices/interface")
    assert [(n.get("type"), n.find("source").get("bridge"), n.find("mac").get("address"))  # type: ignore[union-attr]
            for n in nics] == [("bridge", "br-t1", "52:54:00:00:00:01"), ("bridge", "br-t2", "52:54:00:00:00:02")]
    items = dom.findall(f"metadata/{{{METADATA_NS}}}instance/{{{METADATA_NS}}}item")
    # Text that would break pasted XML ("<&>") survives as data.
    assert {i.get("key"): i.text for i in items} == {"tenant": "t1", "flavor": "m1.large <&>"}
    # A VNC display whose port libvirt picks at each start, and the card it shows.
    [graphics] = dom.findall("devices/graphics")
    assert graphics.attrib == {"type": "vnc", "port": "-1", "autoport": "yes", "listen": "127.0.0.1"}
    assert [listen.attrib for listen in graphics] == [{"type": "address", "address": "127.0.0.1"}]
    assert [v.find("model").get("type") for v in dom.findall("devices/video")] == ["vga"]  # type: ignore[union-attr]


@pytest.mark.parametrize(("arch", "model"), [("x86_64", "vga"), ("i686", "vga"), ("aarch64", "virtio")])
def test_vnc_display_has_a_video_card_of_its_arch(arch: str, model: str) -> None:
    dom = ET.fromstring(domain_xml(replace(GOOD, arch=arch, domain_type="kvm", vnc_listen="::")))
    assert dom.find("devices/graphics/listen").get("address") == "::"  # type: ignore[union-attr]
    assert dom.find("devices/video/model").get("type") == model  # type: ignore[union-attr]


def test_domain_xml_without_devices_or_metadata() -> None:
    dom = ET.fromstring(domain_xml(GOOD))
    assert dom.find("metadata") is None
    assert dom.findall("devices/disk") == [] and dom.findall("devices/interface") == []
    assert [el.tag for el in dom.find("os")] == ["type", "boot"]  # type: ignore[union-attr]
    serial = dom.find("devices/serial")
    assert serial is not None and serial.get("type") == "pty" and serial.find("log") is None
    assert dom.find("devices/graphics") is None and dom.find("devices/video") is None  # no display


@pytest.mark.parametrize(
    ("domain_type", "arch", "machine"),
    [("test", "x86_64", None), ("qemu", "x86_64", "pc"), ("kvm", "i686", "pc"), ("kvm", "aarch64", None)],
)
def test_machine_and_features_by_domain_type(domain_type: str, arch: str, machine: str | None) -> None:
    """Real x86 guests get i440fx ("pc": IDE for the config drive); every type gets ACPI."""
    dom = ET.fromstring(domain_xml(replace(GOOD, domain_type=domain_type, arch=arch)))
    assert dom.get("type") == domain_type
    assert dom.find("os/type").get("machine") == machine  # type: ignore[union-attr]
    assert dom.find("features/acpi") is not None


def test_parse_round_trips_the_spec() -> None:
    record = parse_domain_xml(domain_xml(FULL), "running")
    assert record == {
        "name": "db-1", "uuid": UUID, "state": "running", "domain_type": "kvm", "arch": "x86_64",
        "vcpus": 4, "memory_mib": 2048,
        "disks": [{"path": "/images/db-1.qcow2", "format": "qcow2", "target": "vda", "device": "disk"},
                  {"path": "/images/db-1-data.raw", "format": "raw", "target": "vdb", "device": "disk"},
                  {"path": "/configdrives/db-1.iso", "format": "raw", "target": "hdc", "device": "cdrom"}],
        "nics": [{"bridge": "br-t1", "mac": "52:54:00:00:00:01", "target": "clt00000001", "mtu": 1450},
                 {"bridge": "br-t2", "mac": "52:54:00:00:00:02", "target": "", "mtu": 0}],
        "metadata": {"tenant": "t1", "flavor": "m1.large <&>"},
        "kernel": "/guest/vmlinuz", "initrd": "/guest/initrd.img", "cmdline": "console=ttyS0 root=<&>",
        "console_log": "/var/log/cloudland/db-1.console.log", "vnc_listen": "127.0.0.1", "vnc_port": 0,
    }
    assert spec_of_record(record) == FULL
    assert spec_of_record(parse_domain_xml(domain_xml(GOOD))) == GOOD  # unset fields read back as ""


def test_parse_reads_libvirt_units_and_foreign_domains() -> None:
    """libvirt reports memory in KiB; a foreign domain has no CloudLand metadata."""
    dom = ET.Element("domain", type="test")
    ET.SubElement(dom, "name").text = "foreign"
    ET.SubElement(dom, "memory", unit="KiB").text = str(1024 * 1024)
    record = parse_domain_xml(ET.tostring(dom, encoding="unicode"))
    assert (record["name"], record["memory_mib"], record["vcpus"], record["metadata"]) == ("foreign", 1024, 0, {})
    assert (record["state"], record["kernel"], record["console_log"], record["disks"]) == ("unknown", "", "", [])
    assert (record["vnc_listen"], record["vnc_port"]) == ("", 0)


def live_graphics(port: str, listen: str | None = "127.0.0.1", address: str | None = "127.0.0.1") -> str:
    """A domain's XML with a VNC display as libvirt reports it (``listen=None``: no attribute)."""
    dom = ET.fromstring(domain_xml(GOOD))
    devices = dom.find("devices")
    assert devices is not None
    graphics = ET.SubElement(devices, "graphics", type="vnc", port=port, autoport="yes")
    if listen is not None:
        graphics.set("listen", listen)
    if address is not None:
        ET.SubElement(graphics, "listen", type="address", address=address)
    return ET.tostring(dom, encoding="unicode")


@pytest.mark.parametrize(
    ("xml", "state", "vnc"),
    [
        (live_graphics("5901"), "running", ("127.0.0.1", 5901)),
        (live_graphics("5902"), "paused", ("127.0.0.1", 5902)),  # QEMU and its display still live
        (live_graphics("-1"), "shutoff", ("127.0.0.1", 0)),  # autoport: no port while off
        (live_graphics("5903"), "shutoff", ("127.0.0.1", 0)),  # a fixed port: nobody listens while off
        (live_graphics("5904"), "crashed", ("127.0.0.1", 0)),
        (live_graphics("5905", listen="0.0.0.0", address=None), "running", ("0.0.0.0", 5905)),  # attribute only
        (live_graphics("5906", listen=None, address="::1"), "running", ("::1", 5906)),
        (live_graphics("590x"), "running", ("127.0.0.1", 0)),
        (domain_xml(replace(GOOD, vnc_listen="10.0.0.1")), "running", ("10.0.0.1", 0)),
    ],
)
def test_parse_reads_the_vnc_display(xml: str, state: str, vnc: tuple[str, int]) -> None:
    record = parse_domain_xml(xml, state)
    assert (record["vnc_listen"], record["vnc_port"]) == vnc


def test_parse_ignores_other_displays() -> None:
    dom = ET.fromstring(domain_xml(GOOD))
    ET.SubElement(dom.find("devices"), "graphics", type="spice", port="5930")  # type: ignore[arg-type]
    assert parse_domain_xml(ET.tostring(dom, encoding="unicode"), "running")["vnc_port"] == 0


def test_test_driver_defines_and_starts_a_vnc_display() -> None:
    """libvirt's test driver takes the display and keeps it, but runs no guest: its port stays -1."""
    spec = replace(FULL, name="vnc-check", domain_type="test")
    conn = libvirt.open("test:///default")
    try:
        dom = conn.defineXML(domain_xml(spec))
        try:
            assert spec_of_record(parse_domain_xml(dom.XMLDesc(0))) == spec
            dom.create()
            record = parse_domain_xml(dom.XMLDesc(0), "running")
            assert (record["vnc_listen"], record["vnc_port"]) == ("127.0.0.1", 0)
            assert spec_of_record(record) == spec
            model = ET.fromstring(dom.XMLDesc(0)).find("devices/video/model")
            assert model is not None and model.get("type") == "vga"
            dom.destroy()
        finally:
            dom.undefine()
    finally:
        conn.close()
