"""The rendezvous (launcher/rendezvous.py, proto/README.md §10): framing, strict decoding, and
mutual TLS that takes only the tree's own certificates."""

from __future__ import annotations

import socket
import struct
import threading
from pathlib import Path

import pytest

from cloudland import pki
from cloudland.errors import WireError
from cloudland_launcher import rendezvous
from cloudland_launcher.harness import wait_for
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


@pytest.fixture
def tls(tree_credentials: Path) -> dict[str, rendezvous.Tls]:
    return {role: rendezvous.Tls.load(tree_credentials, role) for role in pki.ROLES}


def answering_listener(tls: rendezvous.Tls, got: list[tuple[str, str]]) -> rendezvous.Listener:
    def on_frame(frame: lpb.Frame, sock: rendezvous.Conn, peer: str) -> None:
        got.append((frame.WhichOneof("body"), frame.locate.host))
        rendezvous.send(sock, located=lpb.LocateAnswer(address="10.0.0.9:1"))
        sock.close()

    return rendezvous.Listener("127.0.0.1", on_frame, tls)


def test_the_listener_hands_each_first_frame_over_and_drops_garbage(tls):
    got: list[tuple[str, str]] = []
    listener = answering_listener(tls[pki.ROOT], got)
    try:
        with socket.create_connection(rendezvous.split_address(listener.address), timeout=2) as junk:
            junk.sendall(b"GET / HTTP/1.0\r\n\r\n")
            try:  # closed, with our unread bytes: a reset or an end of file
                assert junk.recv(10) == b"", "garbage gets the connection closed"
            except ConnectionResetError:
                pass
        answer = rendezvous.request(listener.address, 2.0, tls[pki.NODE], locate=lpb.LocateRequest(host="h2"))
        assert answer.located.address == "10.0.0.9:1"
        assert got == [("locate", "h2")]
        wait_for(lambda: listener.rejected == 1, 5, "the garbage counted")
    finally:
        listener.close()


def test_only_the_trees_own_certificates_get_a_frame_through(tls, tmp_path: Path):
    """A stranger's CA, and the control plane's certificate, are refused before any frame is read."""
    got: list[tuple[str, str]] = []
    listener = answering_listener(tls[pki.ROOT], got)
    stranger = rendezvous.Tls.load(pki.ensure(tmp_path / "stranger"), pki.NODE)
    try:
        for who in (stranger, tls[pki.CONTROL]):
            with pytest.raises((WireError, OSError)):
                rendezvous.request(listener.address, 2.0, who, locate=lpb.LocateRequest(host="evil"))
        wait_for(lambda: listener.rejected == 2, 5, "both refused")
        assert got == []
    finally:
        listener.close()
    # Nor does a member take a listener of another CA for the root.
    other = answering_listener(stranger, got)
    try:
        with pytest.raises(WireError, match="TLS handshake"):
            rendezvous.request(other.address, 2.0, tls[pki.NODE], locate=lpb.LocateRequest(host="h1"))
    finally:
        other.close()


def test_a_channel_takes_a_reader_and_writers_at_once(tls):
    """A host channel: one thread reads while others write (cloudland/rendezvous.Conn's lock)."""
    accepted: list[rendezvous.Conn] = []
    ready = threading.Event()

    def on_frame(frame: lpb.Frame, sock: rendezvous.Conn, peer: str) -> None:
        accepted.append(sock)
        ready.set()

    listener = rendezvous.Listener("127.0.0.1", on_frame, tls[pki.ROOT])
    try:
        client = rendezvous.connect(listener.address, 2.0, tls[pki.NODE])
        rendezvous.send(client, ping=lpb.Ping())
        assert ready.wait(5)
        server = accepted[0]
        server.settimeout(5)
        count = 2000

        def write(sock: rendezvous.Conn) -> None:
            for _ in range(count):
                rendezvous.send(sock, ping=lpb.Ping())

        writers = [threading.Thread(target=write, args=(s,)) for s in (client, server)]
        for w in writers:
            w.start()
        for _ in range(count):
            assert rendezvous.receive(server, "client").WhichOneof("body") == "ping"
            assert rendezvous.receive(client, "server").WhichOneof("body") == "ping"
        for w in writers:
            w.join(10)
        client.close()
        server.close()
    finally:
        listener.close()
