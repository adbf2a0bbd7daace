"""Domain specs and domain XML: what a VM is, as structured data and as libvirt XML.

``DomainSpec`` is validated on construction (InvalidRequest names the field).
``domain_xml`` builds the XML with ElementTree, never by pasting strings;
``parse_domain_xml`` reads any domain's XML back into a ``VMInfo`` record, the
shape ``get``/``list`` report (vocabulary: agents/compute/driver.py).

Real guests (domain types qemu and kvm) run on the i440fx ``pc`` machine: its IDE
bus carries the config drive as a CD-ROM, which guests without an AHCI driver (the
Debian cloud kernel) cannot see on q35's SATA. A kernel, initrd and command line
make a direct kernel boot; ``console_log`` keeps the serial console a pty (so a
libvirt console stream can attach) that virtlogd also copies to a file. ``vnc_listen``
adds a VNC display on that address, its port chosen by libvirt when the domain starts
(autoport: the first free from 5900), and the video card it shows.
"""

from __future__ import annotations

import re
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Any, TypedDict
from xml.etree import ElementTree as ET

from cloudland.addresses import canonical_ip
from cloudland.errors import InvalidRequest

STATES = ("running", "paused", "stopping", "shutoff", "crashed", "suspended", "unknown")
METADATA_NS = "https://cloudland.dev/xmlns/compute/1"
ET.register_namespace("cloudland", METADATA_NS)  # a readable prefix in dumped XML

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_VIRTIO_TARGET = re.compile(r"vd[a-z]{1,2}")
_IDE_TARGET = re.compile(r"hd[a-d]")  # two IDE controllers, two devices each
_BRIDGE = re.compile(r"[A-Za-z0-9_.-]{1,15}")  # IFNAMSIZ - 1
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_GENERATED_TAP = re.compile(r"(vnet|testnet|macvtap)[0-9]+")  # libvirt's own names, reserved to it
_META_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
# XML 1.0 cannot carry most control characters: libvirt would refuse the document.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
ARCHES = ("x86_64", "i686", "aarch64")
DOMAIN_TYPES = ("test", "qemu", "kvm")
DISK_FORMATS = ("qcow2", "raw")
DISK_DEVICES = ("disk", "cdrom")
MAX_VCPUS = 256
MIN_MEMORY_MIB, MAX_MEMORY_MIB = 64, 4 * 1024 * 1024
MAX_PATH_CHARS = 4095  # PATH_MAX less the NUL
MAX_CMDLINE_CHARS = 2047  # x86 COMMAND_LINE_SIZE less the NUL
MIN_MTU, MAX_MTU = 576, 9000  # a NIC's MTU: IPv4's minimum datagram to a jumbo frame
# States in which a domain's QEMU process lives, and with it its VNC server.
LIVE_STATES = ("running", "paused", "stopping", "suspended")
# The video card a VNC display shows: QEMU's standard VGA on x86 (libvirt's default there is
# still the deprecated cirrus); the virt machine of aarch64 has no VGA, but virtio-gpu.
VIDEO_MODELS = {"x86_64": "vga", "i686": "vga", "aarch64": "virtio"}


@dataclass(frozen=True)
class Disk:
    """A file-backed disk: absolute ``path``, image ``format``, guest ``target``, ``device`` kind.

    A "disk" is a virtio block device (target vda, vdb...); a "cdrom" is a read-only
    IDE CD-ROM (target hda-hdd), as config drives are attached.
    """

    path: str
    format: str = "qcow2"
    target: str = "vda"
    device: str = "disk"


@dataclass(frozen=True)
class Nic:
    """A virtio NIC on a host ``bridge`` with a unicast ``mac`` (lower-case); ``target`` names its
    host end (the tap; "" lets libvirt choose), ``mtu`` is the guest's (0: the bridge's)."""

    bridge: str
    mac: str
    target: str = ""
    mtu: int = 0


@dataclass(frozen=True)
class DomainSpec:
    """What a VM is; validated on construction (InvalidRequest names the field).

    String fields that are optional are "" when unset (the record reads them back so).
    """

    name: str
    uuid: str
    vcpus: int
    memory_mib: int
    arch: str = "x86_64"  # the test driver's host says i686 but accepts any arch
    domain_type: str = "test"  # "test" for test:///, "qemu" (TCG) or "kvm" otherwise
    disks: tuple[Disk, ...] = ()
    nics: tuple[Nic, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    kernel: str = ""  # direct kernel boot: a kernel image on the host...
    initrd: str = ""  # ...its initramfs...
    cmdline: str = ""  # ...and its command line
    console_log: str = ""  # a file the serial console is copied to
    vnc_listen: str = ""  # an IP address a VNC display listens on; "" for none

    def __post_init__(self) -> None:
        _check(isinstance(self.name, str) and _NAME.fullmatch(self.name) is not None, "name",
               "1-64 characters of [A-Za-z0-9_.-], starting alphanumeric", self.name)
        try:
            canonical = str(uuidlib.UUID(self.uuid)) if isinstance(self.uuid, str) else ""
        except ValueError:
            canonical = ""
        _check(canonical == str(self.uuid).lower(), "uuid", "a uuid like 8-4-4-4-12 hex digits", self.uuid)
        object.__setattr__(self, "uuid", canonical)  # libvirt reports lower case; compare like with like
        _check_int(self.vcpus, "vcpus", 1, MAX_VCPUS)
        _check_int(self.memory_mib, "memory_mib", MIN_MEMORY_MIB, MAX_MEMORY_MIB)
        _check(self.arch in ARCHES, "arch", f"one of {', '.join(ARCHES)}", self.arch)
        _check(self.domain_type in DOMAIN_TYPES, "domain_type", f"one of {', '.join(DOMAIN_TYPES)}",
               self.domain_type)
        object.__setattr__(self, "disks", tuple(self.disks))
        object.__setattr__(self, "nics", tuple(self.nics))
        for i, disk in enumerate(self.disks):
            where = f"disks[{i}]"
            _check(isinstance(disk, Disk), where, "a disk", disk)
            _check_path(disk.path, f"{where}.path")
            _check(disk.format in DISK_FORMATS, f"{where}.format", f"one of {', '.join(DISK_FORMATS)}",
                   disk.format)
            _check(disk.device in DISK_DEVICES, f"{where}.device", f"one of {', '.join(DISK_DEVICES)}",
                   disk.device)
            if disk.device == "cdrom":
                _check(isinstance(disk.target, str) and _IDE_TARGET.fullmatch(disk.target) is not None,
                       f"{where}.target", "an IDE device hda-hdd for a cdrom", disk.target)
            else:
                _check(isinstance(disk.target, str) and _VIRTIO_TARGET.fullmatch(disk.target) is not None,
                       f"{where}.target", "a virtio device like vda, vdb", disk.target)
        targets = [d.target for d in self.disks]
        _check(len(set(targets)) == len(targets), "disks", "distinct targets", targets)
        object.__setattr__(self, "disks", _libvirt_order(self.disks))
        for i, nic in enumerate(self.nics):
            where = f"nics[{i}]"
            _check(isinstance(nic, Nic), where, "a NIC", nic)
            _check(isinstance(nic.bridge, str) and _BRIDGE.fullmatch(nic.bridge) is not None,
                   f"{where}.bridge", "an interface name of 1-15 characters", nic.bridge)
            # Unicast (low bit of the first octet clear), lower case as libvirt reports it.
            _check(isinstance(nic.mac, str) and _MAC.fullmatch(nic.mac) is not None
                   and int(nic.mac[:2], 16) & 1 == 0, f"{where}.mac", "a lower-case unicast MAC", nic.mac)
            _check(nic.target == "" or (isinstance(nic.target, str) and _BRIDGE.fullmatch(nic.target) is not None),
                   f"{where}.target", "empty or an interface name of 1-15 characters", nic.target)
            _check(nic.mtu == 0 or (isinstance(nic.mtu, int) and MIN_MTU <= nic.mtu <= MAX_MTU), f"{where}.mtu",
                   f"0 or an integer in [{MIN_MTU}, {MAX_MTU}]", nic.mtu)
        macs = [n.mac for n in self.nics]
        _check(len(set(macs)) == len(macs), "nics", "distinct MACs", macs)
        _check(isinstance(self.metadata, dict), "metadata", "a mapping of strings", self.metadata)
        for key, value in self.metadata.items():
            _check(isinstance(key, str) and _META_KEY.fullmatch(key) is not None, "metadata",
                   "keys of [A-Za-z0-9_.-] starting with a letter or _", key)
            _check(isinstance(value, str) and len(value) <= 1024, f"metadata.{key}",
                   "a string of at most 1024 characters", value)
        for name in ("kernel", "initrd", "console_log"):
            if getattr(self, name) != "":
                _check_path(getattr(self, name), name)
        _check(isinstance(self.cmdline, str) and len(self.cmdline) <= MAX_CMDLINE_CHARS
               and not _CONTROL.search(self.cmdline), "cmdline",
               f"a string of at most {MAX_CMDLINE_CHARS} printable characters", self.cmdline)
        # Without a kernel libvirt keeps an initrd or command line but QEMU ignores them.
        _check(self.kernel != "" or self.initrd == "", "initrd", "empty without a kernel", self.initrd)
        _check(self.kernel != "" or self.cmdline == "", "cmdline", "empty without a kernel", self.cmdline)
        if self.vnc_listen != "":
            address = canonical_ip(self.vnc_listen)
            _check(address is not None, "vnc_listen", "an IPv4 or IPv6 address (without a zone), "
                   "or empty for no display", self.vnc_listen)
            # Canonical (libvirt keeps what it is given), so a spec equals the one read back.
            object.__setattr__(self, "vnc_listen", address)


def _libvirt_order(disks: tuple[Disk, ...]) -> tuple[Disk, ...]:
    """``disks`` as libvirt keeps them (virDomainDiskInsert): buses in order of first
    appearance, by target within a bus. The order has no other meaning, and a spec in
    this order equals the spec read back from its domain."""
    buses = list(dict.fromkeys(d.device for d in disks))  # the device decides the bus
    return tuple(sorted(disks, key=lambda d: (buses.index(d.device), _target_index(d.target))))


def _target_index(target: str) -> int:
    """vda -> 0, vdz -> 25, vdaa -> 26 (libvirt's virDiskNameToIndex)."""
    index = 0
    for letter in target[2:]:
        index = index * 26 + ord(letter) - ord("a") + 1
    return index - 1


def _check(ok: bool, field_name: str, expected: str, got: object) -> None:
    if not ok:
        raise InvalidRequest(f"{field_name!r} must be {expected}, got {got!r}")


def _check_int(value: object, field_name: str, low: int, high: int) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    _check(ok, field_name, f"an integer in [{low}, {high}]", value)


def _check_path(value: object, field_name: str) -> None:
    ok = (isinstance(value, str) and value.startswith("/") and len(value) <= MAX_PATH_CHARS
          and not _CONTROL.search(value))
    _check(ok, field_name, f"an absolute path of at most {MAX_PATH_CHARS} characters, "
           "without control characters (NUL, newline...)", value)


class VMInfo(TypedDict):
    """A VM's record: its definition read back from libvirt and its state."""

    name: str
    uuid: str
    state: str
    domain_type: str
    arch: str
    vcpus: int
    memory_mib: int
    disks: list[dict[str, str]]
    nics: list[dict[str, Any]]
    metadata: dict[str, str]
    kernel: str
    initrd: str
    cmdline: str
    console_log: str
    vnc_listen: str  # "" without a VNC display
    vnc_port: int  # the live display's port; 0 while the domain is not running, or without one


# -- domain XML ------------------------------------------------------------------------


def domain_xml(spec: DomainSpec, extra_disks: tuple[str, ...] = ()) -> str:
    """The libvirt domain XML of ``spec``, built element by element, with ``extra_disks``
    (``<disk>`` elements of volumes, agents/storage/disks.py) before its own disks."""
    dom = ET.Element("domain", type=spec.domain_type)
    ET.SubElement(dom, "name").text = spec.name
    ET.SubElement(dom, "uuid").text = spec.uuid
    if spec.metadata:
        instance = ET.SubElement(ET.SubElement(dom, "metadata"), f"{{{METADATA_NS}}}instance")
        for key, value in sorted(spec.metadata.items()):
            ET.SubElement(instance, f"{{{METADATA_NS}}}item", key=key).text = value
    ET.SubElement(dom, "memory", unit="MiB").text = str(spec.memory_mib)
    ET.SubElement(dom, "vcpu").text = str(spec.vcpus)
    os_ = ET.SubElement(dom, "os")
    os_type = ET.SubElement(os_, "type", arch=spec.arch)
    os_type.text = "hvm"
    if spec.domain_type != "test" and spec.arch in ("x86_64", "i686"):
        os_type.set("machine", "pc")  # i440fx: IDE for the config drive (module docstring)
    if spec.kernel:
        ET.SubElement(os_, "kernel").text = spec.kernel
        if spec.initrd:
            ET.SubElement(os_, "initrd").text = spec.initrd
        if spec.cmdline:
            ET.SubElement(os_, "cmdline").text = spec.cmdline
    else:
        ET.SubElement(os_, "boot", dev="hd")
    features = ET.SubElement(dom, "features")
    ET.SubElement(features, "acpi")  # without ACPI a graceful stop/reboot is never seen by the guest
    ET.SubElement(features, "apic")
    for event, action in (("on_poweroff", "destroy"), ("on_reboot", "restart"), ("on_crash", "destroy")):
        ET.SubElement(dom, event).text = action
    devices = ET.SubElement(dom, "devices")
    devices.extend(ET.fromstring(disk) for disk in extra_disks)
    for disk in spec.disks:
        el = ET.SubElement(devices, "disk", type="file", device=disk.device)
        ET.SubElement(el, "driver", name="qemu", type=disk.format)
        ET.SubElement(el, "source", file=disk.path)
        ET.SubElement(el, "target", dev=disk.target, bus="ide" if disk.device == "cdrom" else "virtio")
        if disk.device == "cdrom":
            ET.SubElement(el, "readonly")
    devices.extend(interface_element(nic) for nic in spec.nics)
    # A pty, not a file serial: libvirt's console stream (virDomainOpenConsole) needs one.
    # virtlogd appends to the log across restarts and rotates it (its max_size, 2 MiB by default).
    serial = ET.SubElement(devices, "serial", type="pty")
    if spec.console_log:
        ET.SubElement(serial, "log", file=spec.console_log, append="on")
    ET.SubElement(serial, "target", port="0")
    ET.SubElement(devices, "console", type="pty")
    if spec.vnc_listen:
        # port -1 with autoport: libvirt picks the port at each start (and reports -1 while off).
        graphics = ET.SubElement(devices, "graphics", type="vnc", port="-1", autoport="yes",
                                 listen=spec.vnc_listen)
        ET.SubElement(graphics, "listen", type="address", address=spec.vnc_listen)
        ET.SubElement(ET.SubElement(devices, "video"), "model", type=VIDEO_MODELS[spec.arch])
    return ET.tostring(dom, encoding="unicode")


def interface_element(nic: Nic) -> ET.Element:
    """A NIC's ``<interface>``, as a domain holds it and as libvirt attaches or detaches it."""
    el = ET.Element("interface", type="bridge")
    ET.SubElement(el, "mac", address=nic.mac)
    ET.SubElement(el, "source", bridge=nic.bridge)
    if nic.target:
        ET.SubElement(el, "target", dev=nic.target)
    ET.SubElement(el, "model", type="virtio")
    if nic.mtu:
        ET.SubElement(el, "mtu", size=str(nic.mtu))
    return el


_UNIT_BYTES = {"b": 1, "bytes": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": 1024**2, "mib": 1024**2,
               "mb": 1000**2, "g": 1024**3, "gib": 1024**3, "gb": 1000**3, "t": 1024**4, "tib": 1024**4}


def _attr(parent: ET.Element, child: str, name: str) -> str:
    el = parent.find(child)
    return "" if el is None else el.get(name, "")


def parse_domain_xml(xml: str, state: str = "unknown") -> VMInfo:
    """The record of any domain XML (lenient: foreign domains are reported too)."""
    dom = ET.fromstring(xml)
    memory = dom.find("memory")
    memory_bytes = 0
    if memory is not None and memory.text:
        memory_bytes = int(memory.text) * _UNIT_BYTES.get(memory.get("unit", "KiB").lower(), 1024)
    os_type = dom.find("os/type")
    disks = [
        {"path": _attr(d, "source", "file"), "format": _attr(d, "driver", "type"),
         "target": _attr(d, "target", "dev"), "device": d.get("device", "disk")}
        for d in dom.findall("devices/disk")
    ]
    nics = [{"bridge": _attr(i, "source", "bridge"), "mac": _attr(i, "mac", "address"),
             "target": _own_target(_attr(i, "target", "dev")), "mtu": int(_attr(i, "mtu", "size") or 0)}
            for i in dom.findall("devices/interface")]
    metadata = {item.get("key", ""): item.text or ""
                for item in dom.findall(f"metadata/{{{METADATA_NS}}}instance/{{{METADATA_NS}}}item")}
    vnc_listen, vnc_port = _vnc(dom, state)
    return VMInfo(
        name=dom.findtext("name", ""), uuid=dom.findtext("uuid", ""), state=state,
        domain_type=dom.get("type", ""), arch=os_type.get("arch", "") if os_type is not None else "",
        vcpus=int(dom.findtext("vcpu", "0") or 0), memory_mib=memory_bytes // 1024**2,
        disks=disks, nics=nics, metadata=metadata,
        kernel=dom.findtext("os/kernel", ""), initrd=dom.findtext("os/initrd", ""),
        cmdline=dom.findtext("os/cmdline", ""), console_log=_attr(dom, "devices/serial/log", "file"),
        vnc_listen=vnc_listen, vnc_port=vnc_port,
    )


def _own_target(dev: str) -> str:
    """A NIC's host end as the spec named it: "" for a name libvirt made up at start (vnet0,
    testnet0, macvtap0), which the definition does not hold, so a record reads back as its spec."""
    return "" if _GENERATED_TAP.fullmatch(dev) else dev


def _vnc(dom: ET.Element, state: str) -> tuple[str, int]:
    """The VNC display's listen address and live port: ("", 0) without one; port 0 unless the
    domain lives (libvirt reports an autoport display's port as -1 while it is off)."""
    graphics = dom.find("devices/graphics[@type='vnc']")
    if graphics is None:
        return "", 0
    listen = graphics.find("listen[@type='address']")
    address = listen.get("address", "") if listen is not None else graphics.get("listen", "")
    try:
        port = int(graphics.get("port", "0"))
    except ValueError:
        port = 0
    return address, port if port > 0 and state in LIVE_STATES else 0


def spec_of_record(record: VMInfo, **changes: Any) -> DomainSpec:
    """A spec from a record (for redefining with changes)."""
    fields: dict[str, Any] = {
        "name": record["name"], "uuid": record["uuid"], "vcpus": record["vcpus"],
        "memory_mib": record["memory_mib"], "arch": record["arch"], "domain_type": record["domain_type"],
        "disks": tuple(Disk(**d) for d in record["disks"]), "nics": tuple(Nic(**n) for n in record["nics"]),
        "metadata": dict(record["metadata"]), "kernel": record["kernel"], "initrd": record["initrd"],
        "cmdline": record["cmdline"], "console_log": record["console_log"], "vnc_listen": record["vnc_listen"],
    }
    fields.update(changes)
    return DomainSpec(**fields)
