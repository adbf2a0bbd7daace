"""The rendezvous: frames over mutual TLS that form MPI links and carry host channels (proto/README.md §10).

MPI cannot tell a process where its peer is, and ``MPI_Comm_accept`` blocks its whole process
with no timeout, so links form in a fixed order over TCP first: the child asks the root where
its parent listens (``locate``), reaches the parent on TCP (proof that the host is reachable:
an MPI connect to a cut host hangs), sends its MPI port name (``link``), and accepts only once
the parent has said it connects now. Host agents keep a channel of the same frames to the root.

Every connection is mutual TLS 1.3 with certificates of the tree's CA (cloudland/pki.py), and
each side takes only a root or node certificate (§10.1): a process that is not part of the
tree cannot locate, link, join as a host, or give orders.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError

from cloudland import pki
from cloudland.errors import WireError
from cloudland_proto.v1 import envelope_pb2 as pb
from cloudland_proto.v1 import link_pb2 as lpb

log = logging.getLogger(__name__)

MAX_FRAME = 1 << 20       # no rendezvous frame comes near this; a larger length is garbage
FIRST_FRAME_TIMEOUT_S = 5.0
_LENGTH = struct.Struct("!I")


@dataclass(frozen=True)
class Tls:
    """The TLS contexts of one member of the tree: ``role`` is root or node (cloudland/pki.py)."""

    server: ssl.SSLContext
    client: ssl.SSLContext

    @classmethod
    def load(cls, pki_dir: Path, role: str) -> Tls:
        creds = pki.Credentials.load(pki_dir, role)
        return cls(creds.context(server=True), creds.context(server=False))


class Conn:
    """A rendezvous connection over TLS that two threads may share, one reading and others
    writing (a host channel): OpenSSL's objects must not run two calls at once, so each call
    holds a lock, and waiting for bytes happens outside it (cpython#76714, #151508)."""

    def __init__(self, tls: ssl.SSLSocket, timeout: float | None) -> None:
        self.tls = tls
        self.role = pki.peer_role(tls)
        self._timeout = timeout
        self._lock = threading.Lock()
        tls.setblocking(False)

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def getsockname(self) -> Any:
        return self.tls.getsockname()

    def recv(self, size: int) -> bytes:
        return self._io(lambda: self.tls.recv(size), want_write=False)

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[self._io(lambda: self.tls.send(view), want_write=True):]

    def _io(self, call: Callable[[], Any], want_write: bool) -> Any:
        end = None if self._timeout is None else time.monotonic() + self._timeout
        while True:
            with self._lock:
                fd = self.tls.fileno()
                if fd < 0:
                    raise ConnectionError("the connection is closed")
                try:
                    return call()
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError("timed out")
            poller = select.poll()  # not select(): a root may hold more than 1024 descriptors
            poller.register(fd, select.POLLOUT if want_write else select.POLLIN)
            if not poller.poll(None if left is None else max(1, int(left * 1000))):
                raise TimeoutError("timed out")

    def close(self) -> None:
        with self._lock:
            self.tls.close()

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _secure(sock: socket.socket, context: ssl.SSLContext, server: bool, peer: str, timeout: float | None) -> Conn:
    """The TLS handshake on ``sock`` (bounded by its timeout), and the peer's role checked."""
    try:
        tls = context.wrap_socket(sock, server_side=server)
    except (OSError, ValueError) as exc:
        sock.close()
        raise WireError(f"TLS handshake with {peer} failed: {exc}") from exc
    conn = Conn(tls, timeout)
    if conn.role not in pki.TREE_ROLES:
        conn.close()
        raise WireError(f"{peer} presented a {conn.role or 'foreign'} certificate, not a tree member's")
    return conn


def connect(address: str, timeout: float, tls: Tls) -> Conn:
    """A TLS connection to a rendezvous listener (the root's or a relay's), the peer checked."""
    sock = socket.create_connection(split_address(address), timeout=timeout)
    return _secure(sock, tls.client, False, address, timeout)


def encode(**body: Any) -> bytes:
    data = lpb.Frame(version=pb.WIRE_VERSION_1, **body).SerializeToString()
    return _LENGTH.pack(len(data)) + data


def send(sock: socket.socket | Conn, **body: Any) -> None:
    """Send one frame; raises OSError if the peer is gone."""
    sock.sendall(encode(**body))


def _read_exactly(sock: socket.socket | Conn, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(left)
        if not chunk:
            raise ConnectionError("the peer closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def receive(sock: socket.socket | Conn, sender: str) -> lpb.Frame:
    """Read one frame; raises WireError for garbage, OSError/ConnectionError for a lost peer."""
    (size,) = _LENGTH.unpack(_read_exactly(sock, _LENGTH.size))
    if size > MAX_FRAME:
        raise WireError(f"frame of {size} bytes from {sender} exceeds {MAX_FRAME}")
    frame = lpb.Frame()
    try:
        frame.ParseFromString(_read_exactly(sock, size))
    except DecodeError as exc:
        raise WireError(f"{size} bytes from {sender} are not a rendezvous frame") from exc
    if frame.version != pb.WIRE_VERSION_1:
        raise WireError(f"frame from {sender} has wire version {frame.version}, expected {pb.WIRE_VERSION_1}")
    if frame.WhichOneof("body") is None:
        raise WireError(f"frame from {sender} has no body")
    return frame


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise WireError(f"bad address {address!r}: expected host:port")
    return host.strip("[]"), int(port)


def request(address: str, timeout: float, tls: Tls, **body: Any) -> lpb.Frame:
    """One question, one answer, on a fresh connection (``locate``)."""
    with connect(address, timeout, tls) as sock:
        send(sock, **body)
        return receive(sock, address)


class Listener:
    """Accepts connections on ``address`` (host, or host:port; port 0 picks one).

    Each connection's first frame goes to ``on_frame(frame, conn, peer)`` on a thread of its
    own, which then owns the connection. A peer without a tree member's certificate, and
    garbage, are logged, counted in ``rejected`` and dropped.
    """

    def __init__(self, address: str, on_frame: Callable[[lpb.Frame, Conn, str], None], tls: Tls) -> None:
        host, port = (split_address(address) if ":" in address else (address, 0))
        self._sock = socket.create_server((host, port), backlog=256, reuse_port=False)
        self._on_frame = on_frame
        self._tls = tls
        self.rejected = 0
        bound = self._sock.getsockname()
        self.address = f"{host}:{bound[1]}"
        self._closed = False
        threading.Thread(target=self._accept_loop, name="rendezvous", daemon=True).start()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, peer = self._sock.accept()
            except OSError:
                if self._closed:
                    return
                continue
            threading.Thread(target=self._first_frame, args=(conn, f"{peer[0]}:{peer[1]}"),
                             name="rendezvous-conn", daemon=True).start()

    def _first_frame(self, sock: socket.socket, peer: str) -> None:
        sock.settimeout(FIRST_FRAME_TIMEOUT_S)
        try:
            conn = _secure(sock, self._tls.server, True, peer, FIRST_FRAME_TIMEOUT_S)
        except WireError as exc:
            self.rejected += 1
            log.warning("event=rendezvous_rejected peer=%s error=%s", peer, exc)
            return
        try:
            frame = receive(conn, peer)
        except (OSError, WireError) as exc:
            self.rejected += isinstance(exc, WireError)
            log.warning("event=rendezvous_rejected peer=%s error=%s", peer, exc)
            conn.close()
            return
        try:
            self._on_frame(frame, conn, peer)
        except Exception:  # noqa: BLE001 - one bad peer must not end the listener
            log.exception("event=rendezvous_error peer=%s", peer)
            conn.close()

    def close(self) -> None:
        self._closed = True
        try:
            self._sock.close()
        except OSError:
            pass
