"""The rendezvous: plain TCP frames that form MPI links and carry host channels (proto/README.md §10).

MPI cannot tell a process where its peer is, and ``MPI_Comm_accept`` blocks its whole process
with no timeout, so links form in a fixed order over TCP first: the child asks the root where
its parent listens (``locate``), reaches the parent on TCP (proof that the host is reachable:
an MPI connect to a cut host hangs), sends its MPI port name (``link``), and accepts only once
the parent has said it connects now. Host agents keep a channel of the same frames to the root.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

from google.protobuf.message import DecodeError

from cloudland.errors import WireError
from cloudland_proto.v1 import envelope_pb2 as pb
from cloudland_proto.v1 import link_pb2 as lpb

log = logging.getLogger(__name__)

MAX_FRAME = 1 << 20       # no rendezvous frame comes near this; a larger length is garbage
FIRST_FRAME_TIMEOUT_S = 5.0
_LENGTH = struct.Struct("!I")


def encode(**body: Any) -> bytes:
    data = lpb.Frame(version=pb.WIRE_VERSION_1, **body).SerializeToString()
    return _LENGTH.pack(len(data)) + data


def send(sock: socket.socket, **body: Any) -> None:
    """Send one frame; raises OSError if the peer is gone."""
    sock.sendall(encode(**body))


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(left)
        if not chunk:
            raise ConnectionError("the peer closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def receive(sock: socket.socket, sender: str) -> lpb.Frame:
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


def request(address: str, timeout: float, **body: Any) -> lpb.Frame:
    """One question, one answer, on a fresh connection (``locate``)."""
    with socket.create_connection(split_address(address), timeout=timeout) as sock:
        send(sock, **body)
        return receive(sock, address)


class Listener:
    """Accepts connections on ``address`` (host, or host:port; port 0 picks one).

    Each connection's first frame goes to ``on_frame(frame, sock, peer)`` on a thread of its
    own, which then owns the socket. Garbage is logged and the connection dropped.
    """

    def __init__(self, address: str, on_frame: Callable[[lpb.Frame, socket.socket, str], None]) -> None:
        host, port = (split_address(address) if ":" in address else (address, 0))
        self._sock = socket.create_server((host, port), backlog=256, reuse_port=False)
        self._on_frame = on_frame
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

    def _first_frame(self, conn: socket.socket, peer: str) -> None:
        conn.settimeout(FIRST_FRAME_TIMEOUT_S)
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
