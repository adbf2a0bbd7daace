"""The rendezvous frames (launcher/rendezvous.py, proto/README.md §10): framing and strict decoding."""

from __future__ import annotations

import socket
import struct
import threading

import pytest

from cloudland.errors import WireError
from cloudland_launcher import rendezvous
from cloudland_proto.v1 import link_pb2 as lpb


def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    b.settimeout(2)
    return a, b


def test_a_frame_round_trips():
    a, b = pair()
    rendezvous.send(a, host_hello=lpb.HostHello(host="h1", address="10.0.0.2", leaves=1, held=[3], pid=7))
    frame = rendezvous.receive(b, "h1")
    assert frame.WhichOneof("body") == "host_hello" and list(frame.host_hello.held) == [3]


@pytest.mark.parametrize("data, error", [
    (struct.pack("!I", rendezvous.MAX_FRAME + 1), "exceeds"),
    (struct.pack("!I", 3) + b"\xff\xff\xff", "not a rendezvous frame"),
    (struct.pack("!I", 2) + b"\x08\x07", "wire version 7"),
    (struct.pack("!I", 2) + b"\x08\x01", "no body"),
])
def test_garbage_is_refused_with_what_was_wrong(data: bytes, error: str):
    a, b = pair()
    a.sendall(data)
    with pytest.raises(WireError, match=error):
        rendezvous.receive(b, "peer")


def test_a_peer_that_closes_midway_is_a_connection_error():
    a, b = pair()
    a.sendall(struct.pack("!I", 10) + b"\x08")
    a.close()
    with pytest.raises(ConnectionError):
        rendezvous.receive(b, "peer")


@pytest.mark.parametrize("address", ["nohost", "host:", ":80", "h:x"])
def test_bad_addresses_are_refused(address: str):
    with pytest.raises(WireError, match="bad address"):
        rendezvous.split_address(address)


def test_the_listener_hands_each_first_frame_over_and_drops_garbage():
    got: list[tuple[str, str]] = []
    done = threading.Event()

    def on_frame(frame: lpb.Frame, sock: socket.socket, peer: str) -> None:
        got.append((frame.WhichOneof("body"), frame.locate.host))
        rendezvous.send(sock, located=lpb.LocateAnswer(address="10.0.0.9:1"))
        sock.close()
        done.set()

    listener = rendezvous.Listener("127.0.0.1", on_frame)
    try:
        with socket.create_connection(rendezvous.split_address(listener.address), timeout=2) as junk:
            junk.sendall(b"GET / HTTP/1.0\r\n\r\n")
            try:  # closed, with our unread bytes: a reset or an end of file
                assert junk.recv(10) == b"", "garbage gets the connection closed"
            except ConnectionResetError:
                pass
        answer = rendezvous.request(listener.address, 2.0, locate=lpb.LocateRequest(host="h2"))
        assert answer.located.address == "10.0.0.9:1"
        assert done.wait(2) and got == [("locate", "h2")]
        assert listener.rejected == 1
    finally:
        listener.close()
