"""Serial consoles of the VMs on one hypervisor: what a guest printed, and typing into it.

Vocabulary
    console log   the file libvirt writes a VM's first serial port to: ``<serial><log
                  file=.../>`` (a pty with a log) or ``<serial type='file'><source path=.../>``.
                  It holds everything the guest printed since the domain started, whether or
                  not anyone was connected, so reading is a plain read at an offset: nothing
                  is lost between two reads and two readers never steal bytes from each other.
    input         bytes typed into the VM: sent through libvirt's console stream
                  (``virDomainOpenConsole``). The stream is opened at the first write and kept:
                  closing it right after a send drops the bytes still on their way (measured:
                  nothing reached the guest). A thread drains what the guest prints into it
                  (the log has it already), so an unread stream never stalls the serial port.
                  Streams live on a libvirt connection of their own: a blocking receive on the
                  agent's connection held up its other calls, the heartbeat's report among them,
                  until the rank was declared lost (seen with the suite loading the machine).

Verbs
    read(name, offset, max_bytes)  up to ``max_bytes`` of the log from ``offset``, the next
                                   offset and the log's size. An offset past the end (the
                                   log was restarted with the domain) reads from 0 again.
    write(name, data)              ``data`` reaches the guest's serial port. Not idempotent
                                   (typing twice types twice); callers send each input once.
                                   A VM that is not running is refused.

A VM without a console log (the test driver's domains have no serial ports) is a
DriverError saying so. Every libvirtError is translated here, naming the VM and hypervisor.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from xml.etree import ElementTree as ET

import libvirt

from cloudland.errors import DriverError
from cloudland_agents.compute.driver import lookup_domain

MAX_READ = 1 << 20


class Console:
    """The serial consoles of one hypervisor's VMs."""

    def __init__(self, conn: libvirt.virConnect, hypervisor_id: int) -> None:
        self.conn = conn
        self.hypervisor_id = hypervisor_id
        self._stream_conn: libvirt.virConnect | None = None  # opened at the first write
        self._streams: dict[str, tuple[libvirt.virStream, threading.Thread]] = {}
        self._lock = threading.Lock()

    def _domain(self, name: str) -> libvirt.virDomain:
        return lookup_domain(self.conn, self.hypervisor_id, name)

    def log_path(self, name: str) -> Path:
        """The console log file of VM ``name`` (its first serial port's)."""
        domain = self._domain(name)
        try:
            root = ET.fromstring(domain.XMLDesc(0))
        except libvirt.libvirtError as exc:
            raise DriverError(self.hypervisor_id, f"reading VM {name!r}'s definition failed: {exc}") from exc
        for serial in root.iterfind("./devices/serial"):
            log = serial.find("log")
            if log is not None and log.get("file"):
                return Path(log.get("file", ""))
            source = serial.find("source")
            if serial.get("type") == "file" and source is not None and source.get("path"):
                return Path(source.get("path", ""))
        raise DriverError(self.hypervisor_id, f"VM {name!r} has no serial console log")

    def read(self, name: str, offset: int, max_bytes: int) -> tuple[bytes, int, int]:
        """``(data, next_offset, size)`` of VM ``name``'s console log from ``offset``."""
        path = self.log_path(name)
        max_bytes = max(1, min(max_bytes, MAX_READ))
        try:
            with open(path, "rb") as log:
                size = os.fstat(log.fileno()).st_size
                if offset > size:
                    offset = 0  # the log began again (domain restarted without append)
                log.seek(offset)
                data = log.read(max_bytes)
        except FileNotFoundError:
            return b"", 0, 0  # defined, never started: nothing printed yet
        except OSError as exc:
            raise DriverError(self.hypervisor_id, f"reading VM {name!r}'s console log {path} failed: "
                                                  f"{exc.strerror}") from exc
        return data, offset + len(data), size

    def write(self, name: str, data: bytes) -> None:
        """Type ``data`` into VM ``name``'s serial console."""
        with self._lock:
            for attempt in (1, 2):  # a stream from before a restart of the VM is dead: reopen once
                stream = self._stream(name)
                try:
                    sent = 0
                    while sent < len(data):
                        sent += stream.send(data[sent:])
                    return
                except libvirt.libvirtError as exc:
                    self._drop(name)
                    if attempt == 2:
                        raise DriverError(self.hypervisor_id, f"typing into VM {name!r}'s console failed: "
                                                              f"{exc}") from exc

    def _stream(self, name: str) -> libvirt.virStream:
        held = self._streams.get(name)
        if held is not None and held[1].is_alive():
            return held[0]
        if not self._domain(name).isActive():
            raise DriverError(self.hypervisor_id, f"VM {name!r} is not running: nothing reads its console")
        try:
            if self._stream_conn is None:
                self._stream_conn = libvirt.open(self.conn.getURI())
            domain = self._stream_conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            raise DriverError(self.hypervisor_id, f"opening VM {name!r}'s console failed: {exc}") from exc
        stream = self._stream_conn.newStream(0)
        try:
            # FORCE: take the console from a stale holder (a client that went away).
            domain.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        except libvirt.libvirtError as exc:
            raise DriverError(self.hypervisor_id, f"opening VM {name!r}'s console failed: {exc}") from exc
        drain = threading.Thread(target=_drain, args=(stream,), daemon=True, name=f"console-{name}")
        drain.start()
        self._streams[name] = (stream, drain)
        return stream

    def _drop(self, name: str) -> None:
        held = self._streams.pop(name, None)
        if held is not None:
            try:
                held[0].abort()
            except libvirt.libvirtError:
                pass


def _drain(stream: libvirt.virStream) -> None:
    """Read and discard until the console closes (the VM stopped, or the stream was dropped)."""
    try:
        while isinstance(chunk := stream.recv(65536), bytes) and chunk:
            pass
    except libvirt.libvirtError:
        pass
