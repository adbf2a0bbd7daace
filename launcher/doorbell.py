"""A doorbell: lets a rank on the same host wake a sleeping peer at once.

Waiting ranks poll MPI with an adaptive sleep (a blocked MPI receive spins a
core). With ~100 ranks on 2 cores the sleep must reach milliseconds, which
would add that much to every hop. So each rank also waits on an abstract UNIX
datagram socket named after its pid; after sending to a peer on the same host
the sender rings it. A ring carries no data and can only cause an extra poll,
so a stray one is harmless. Peers on other hosts are not rung: they poll.
"""

from __future__ import annotations

import os
import select
import socket


def _address(pid: int) -> bytes:
    return b"\0cloudland-doorbell-%d" % pid


class Doorbell:
    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(_address(os.getpid()))
        self._sock.setblocking(False)
        self._own = _address(os.getpid())

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout``; True if rung (the rings are drained)."""
        ready, _, _ = select.select([self._sock], [], [], timeout)
        if not ready:
            return False
        try:
            while True:
                self._sock.recv(64)
        except BlockingIOError:
            pass
        return True

    def ring(self, pid: int) -> None:
        """Wake the rank ``pid`` on this host (a full or missing bell is ignored)."""
        try:
            self._sock.sendto(b"!", _address(pid))
        except OSError:
            pass

    def ring_self(self) -> None:
        """Wake our own loop (from another thread: a finished operation, a gRPC request)."""
        try:
            self._sock.sendto(b"!", self._own)
        except OSError:
            pass
