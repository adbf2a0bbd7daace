"""A real hypervisor for tests: libvirtd + QEMU (TCG) on qemu:///system, booting the tiny test guest.

The one way tests get that hypervisor: every module of tests/realvm and the compute contract
suite in tests/unit load this plugin (``pytest_plugins``). A plugin, not a conftest: the
contract suite needs it for its "qemu" parametrisation only, and a conftest's fixtures are
invisible outside its own directory. The session fixture ``qemu_libvirt`` is requested
lazily, so ``-m "not realvm"`` never starts a daemon. It

- starts libvirtd + virtlogd with deploy/libvirtd.sh only if nothing answers on
  qemu:///system (again before a test, should someone have stopped them meanwhile) and, if
  it started them, stops them at the end unless another client has domains running or a
  connection open by then: the daemon and its pid files are shared by every test session
  on the machine (the script takes a lock, so parallel sessions' starts and stops take turns);
- builds the guest once (deploy/guest/build.sh) into a 0755 directory: QEMU runs as
  libvirt-qemu and cannot traverse pytest's 0700 tmp_path;
- makes a bridge for the guests' taps and removes it at the end;
- checks at the end that no domain whose name it handed out (``made``) is left, nor its QEMU.

``qemu_dir`` gives a test a directory QEMU can reach, removed afterwards. ``qemu_host`` gives
a test a ``QemuHost``: a LibvirtCompute on the connection and specs for guests that boot
(kernel, initrd, a config drive, a console log). At its teardown every VM the test made is
deleted and no QEMU of theirs may remain.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid as uuidlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import libvirt
import pytest

from cloudland_agents.compute.driver import Disk, DomainSpec, LibvirtCompute, Nic
from cloudland_agents.compute.ops import kvm_usable
from cloudland_agents.compute.configdrive import build_config_drive

REPO = Path(__file__).resolve().parents[2]
URI = "qemu:///system"
LIBVIRTD_SH = REPO / "deploy" / "libvirtd.sh"
VIRTLOGD_SOCKET = Path("/run/libvirt/virtlogd-sock")
BOOT_TIMEOUT_S = 120.0  # ~3.5 s on an idle machine under TCG; CI may be busy
READY = "cloudland-guest: ready"  # deploy/guest/init prints it once per boot
CMDLINE = "console=ttyS0 quiet"
IMAGE_MIB = 64


def guest_mac(name: str) -> str:
    """A stable unicast MAC for VM ``name`` (QEMU's 52:54:00 prefix)."""
    tail = uuidlib.uuid5(uuidlib.NAMESPACE_DNS, name).bytes[:3]
    return "52:54:00:" + ":".join(f"{b:02x}" for b in tail)


def guest_uuid(name: str) -> str:
    return str(uuidlib.uuid5(uuidlib.NAMESPACE_DNS, name))


def qemu_processes(names: set[str] | frozenset[str]) -> dict[int, str]:
    """PID -> domain name of the QEMU processes running any of ``names`` (libvirt passes -name guest=NAME,...)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or not os.path.basename(argv[0]).startswith(b"qemu-system-"):
            continue
        for arg in argv:
            if arg.startswith(b"guest="):
                name = arg.removeprefix(b"guest=").split(b",")[0].decode(errors="replace")
                if name in names:
                    found[int(entry.name)] = name
    return found


def _run(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done


class QemuSession:
    """What every real-VM test shares: the daemon's connection, the built guest, the bridge."""

    def __init__(self, workdir: Path, bridge: str) -> None:
        self.workdir = workdir
        self.guest = workdir / "guest"
        self.bridge = bridge
        self.domain_type = "kvm" if kvm_usable() else "qemu"
        self.made: set[tuple[str, str]] = set()  # (name, uuid) of every spec handed out
        self.started_daemon = False
        self._conn: libvirt.virConnect | None = None

    @property
    def conn(self) -> libvirt.virConnect:
        """The connection, starting the daemon first if it is not running.

        The daemon is shared by every session on the machine: another one, or a person, may
        have stopped it since the last test.
        """
        if self._conn is not None:
            try:
                # libvirtd connects to virtlogd whenever a domain starts (its logs, <serial><log>).
                if self._conn.isAlive() and VIRTLOGD_SOCKET.exists():
                    return self._conn
            except libvirt.libvirtError:
                pass
            self.close()  # else, still open, it would count as another client at the end
        if subprocess.run([str(LIBVIRTD_SH), "status"], stdin=subprocess.DEVNULL).returncode != 0:
            # Nothing answered: the daemon is brought up for tests, and this session stops it
            # at its end unless it has other users by then (if two sessions both come here, the
            # script starts it once and the last one out stops it). Else it is someone else's.
            self.started_daemon = True
            _run(str(LIBVIRTD_SH), "start", timeout=900)
        elif not VIRTLOGD_SOCKET.exists():
            _run(str(LIBVIRTD_SH), "start", timeout=900)  # brings back a virtlogd gone from under libvirtd
        self._conn = libvirt.open(URI)
        return self._conn

    def close(self) -> str:
        """Close the connection; the running domains of others, if any (as a string)."""
        if self._conn is None:
            return ""
        try:
            running = self._conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
            return " ".join(sorted(d.name() for d in running))
        except libvirt.libvirtError:
            return ""
        finally:
            try:
                self._conn.close()
            except libvirt.libvirtError:
                pass
            self._conn = None


@pytest.fixture(scope="session")
def qemu_libvirt() -> Iterator[QemuSession]:
    if os.geteuid() != 0:
        pytest.skip("starts libvirtd and QEMU: needs root")
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors arrive as exceptions
    workdir = Path(tempfile.mkdtemp(prefix="cloudland-qemu-host-"))
    workdir.chmod(0o755)
    session = QemuSession(workdir, f"clt{os.getpid() % 100000}br")  # at most 11 characters
    try:
        session.conn  # noqa: B018 - starts the daemon
        started = time.monotonic()
        _run(str(REPO / "deploy" / "guest" / "build.sh"), str(session.guest), timeout=300)
        session.guest.chmod(0o755)  # whatever the umask: QEMU reads the kernel and the disks in it
        print(f"guest built in {time.monotonic() - started:.2f}s")
        _run("ip", "link", "add", "name", session.bridge, "type", "bridge")
        _run("ip", "link", "set", session.bridge, "up")
        yield session
        names = {name for name, _ in session.made}
        left = sorted(d.name() for d in session.conn.listAllDomains() if d.name() in names)
        assert left == [], f"domains left behind: {left}"
        assert qemu_processes(names) == {}, "QEMU processes left behind"
    finally:
        others = session.close()
        subprocess.run(["ip", "link", "del", session.bridge], stdin=subprocess.DEVNULL, capture_output=True)
        if session.started_daemon:
            others = others or libvirtd_clients()
            if others:
                print(f"libvirtd left running: others use it ({others})")
            else:
                _run(str(LIBVIRTD_SH), "stop", timeout=60)
        shutil.rmtree(workdir, ignore_errors=True)


def libvirtd_clients() -> str:
    """Other processes' clients of libvirtd now, as virt-admin lists them ("" if none or unknown).

    Not this process's: its connection outlives ``close()`` while a domain or stream object
    of it lives (libvirt counts references), and pytest keeps the last test's fixture values
    until after the session's teardown.
    """
    def virt_admin(*argv: str) -> str:
        return subprocess.run(["virt-admin", *argv], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=30).stdout

    others = []
    for line in virt_admin("srv-clients-list", "libvirtd").splitlines():
        if not line.strip()[:1].isdigit():
            continue
        client = line.split()[0]
        rows = [row.partition(":") for row in virt_admin("client-info", "libvirtd", client).splitlines()]
        info = {key.strip(): value.strip() for key, colon, value in rows if colon}
        pid = info.get("unix_process_id", "?")  # none for a TCP client
        if info and pid != str(os.getpid()):  # no info: gone meanwhile
            others.append(f"{client} (pid {pid})")
    return f"clients {', '.join(others)}" if others else ""


@pytest.fixture
def qemu_dir(qemu_libvirt: QemuSession) -> Iterator[Path]:
    """A directory of the test's own, removed afterwards, that QEMU (user libvirt-qemu) can reach."""
    path = Path(tempfile.mkdtemp(prefix="test-", dir=qemu_libvirt.workdir))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def console_echo(dom: libvirt.virDomain, command: bytes, expected: bytes, timeout: float = 30.0) -> bytes:
    """Type ``command`` on the guest's console through a libvirt stream; what came back until ``expected``."""
    stream = dom.connect().newStream(0)
    dom.openConsole(None, stream, 0)
    received = bytearray()

    def read() -> None:  # blocking stream: recv returns b"" (or raises) when the console closes
        try:
            while isinstance(chunk := stream.recv(4096), bytes) and chunk:
                received.extend(chunk)
        except libvirt.libvirtError:
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        stream.send(b"\n" + command + b"\n")
        end = time.monotonic() + timeout
        while expected not in received and time.monotonic() < end:
            time.sleep(0.05)
        return bytes(received)
    finally:
        try:
            stream.abort()
        except libvirt.libvirtError:
            pass
        reader.join(timeout=5)


class QemuHost:
    """One test's view of the real hypervisor: a driver, guest specs, the guests' consoles."""

    vms_at_once = 4  # the concurrency tests' scale: each VM is a QEMU process on 2 cores
    power_cycles = 2
    serves_vnc = True  # QEMU gives a VNC display a port when it starts

    def __init__(self, session: QemuSession, directory: Path, hypervisor_id: int) -> None:
        self.session = session
        self.dir = directory
        self.made: set[tuple[str, str]] = set()
        # A short retry: the tiny guest boots in ~3.5 s, and the first ACPI press of a
        # stop issued meanwhile is lost (its init listens on the power button only then).
        self.compute = LibvirtCompute(session.conn, hypervisor_id, poll_s=0.1, shutdown_retry_s=1.0)

    def disk(self, name: str, fmt: str = "qcow2") -> Disk:
        """A boot disk image of ``name`` (empty: the guest boots from its initrd)."""
        path = self.dir / f"{name}.{fmt}"
        if not path.exists():
            if fmt == "qcow2":
                _run("qemu-img", "create", "-q", "-f", "qcow2", str(path), f"{IMAGE_MIB}M")
            else:
                with open(path, "wb") as image:
                    image.truncate(IMAGE_MIB * 1024 * 1024)
        return Disk(str(path), fmt, "vda")

    def spec(self, name: str = "web-1", **changes: Any) -> DomainSpec:
        """A guest that boots the test kernel and finds its config drive (else it looks for 10 s)."""
        vm_uuid = guest_uuid(name)
        drive = self.dir / f"{name}.config.iso"
        if not drive.exists():
            build_config_drive(drive, hostname=name.replace("_", "-").replace(".", "-"), uuid=vm_uuid)
        base = DomainSpec(
            name=name, uuid=vm_uuid, vcpus=2, memory_mib=512, domain_type=self.session.domain_type,
            disks=(self.disk(name), Disk(str(drive), "raw", "hdc", "cdrom")),
            nics=(Nic(self.session.bridge, guest_mac(name)),), metadata={"tenant": "t1"},
            kernel=str(self.session.guest / "vmlinuz"), initrd=str(self.session.guest / "initrd.img"),
            cmdline=CMDLINE, console_log=str(self.dir / f"{name}.console.log"),
        )
        made = replace(base, **changes)
        self.made.add((made.name, made.uuid))
        self.session.made.add((made.name, made.uuid))
        return made

    def names(self) -> list[str]:
        """The VMs on the host that this test made: the daemon may run others' domains too."""
        made = {name for name, _ in self.made}
        return sorted(r["name"] for r in self.compute.list() if r["name"] in made)

    def console(self, name: str) -> str:
        path = self.dir / f"{name}.console.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_boots(self, name: str, count: int, timeout: float = BOOT_TIMEOUT_S) -> None:
        """Wait until the guest has booted ``count`` times since it was made (its log appends)."""
        end = time.monotonic() + timeout
        while self.console(name).count(READY) < count:
            running = self.session.conn.lookupByName(name).isActive()
            if not running or time.monotonic() > end:
                why = "shut off" if not running else f"did not boot {count} times within {timeout}s"
                raise AssertionError(f"{name} {why}:\n{self.console(name)[-3000:]}")
            time.sleep(0.1)

    def cleanup(self) -> None:
        """Delete the test's VMs (only those whose uuid is one it made) and check no QEMU is left."""
        def remove(name: str, vm_uuid: str) -> None:
            try:
                dom = self.session.conn.lookupByName(name)
                if dom.UUIDString() != vm_uuid:
                    return  # not ours: a conflict test's second spec, or a foreign VM
                if dom.isActive():
                    dom.destroy()
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise

        # In parallel: a destroy takes 1-2 s here (libvirt waits for QEMU to be reaped).
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda made: remove(*made), self.made))
        names = {name for name, _ in self.made}
        assert qemu_processes(names) == {}, "QEMU processes left behind"


@pytest.fixture
def qemu_host(qemu_libvirt: QemuSession, qemu_dir: Path, request: pytest.FixtureRequest) -> Iterator[QemuHost]:
    host = QemuHost(qemu_libvirt, qemu_dir, getattr(request.module, "HV", 0))
    try:
        yield host
    finally:
        host.cleanup()
