"""One MPI link to a peer, and the adaptive poller every waiting rank uses.

Only the rank's MPI thread touches a Link. Sends are non-blocking (a blocking
send of a large message waits for the receiver, and two ranks sending large
batches to each other would deadlock); receives are matched probes with an
explicit source.

MPI errors do not decide that a peer is lost (proto/README.md §6): with MPICH's
libfabric sockets provider, the failure of one peer surfaces as an error in
whichever call drives progress next, often on another link (measured: a relay
whose child's host died saw the error while probing its parent's link). A link
counts such errors and logs them; silence, a dead pid on the same host, or a
successor that links again decide.

**Which call meets the error decides who dies** (issue 15, docs/architecture.md "Supervision").
MPICH makes a dead peer's completion error fatal (ch4/netmod/ofi/ofi_events.c:593). A call with
no communicator (``MPI_Test``, ``MPI_Mrecv``, ``MPI_Comm_free``) that meets it ends its own
process (exit 143); a call on a link (``MPI_Improbe``) sends MPICH's COMM_ABORT to that link's
far side instead and goes on (ch4/src/ch4_globals.c:125, mpidig_comm_abort.c). Two options
choose where it lands; the tree uses **neither** (measured at 1,000 chaos operations, they moved
deaths rather than prevented them: docs/architecture.md). ``contain=True`` never makes a call
without a communicator that can drive progress: it asks ``MPIX_Request_is_complete`` (no
progress, no error) before it tests a request, receives with ``MPI_Imrecv`` instead of
``MPI_Mrecv``, pushes its sends with ``MPI_Iprobe`` and, when it closes, parks the communicator
instead of freeing it, so its process lives and the COMM_ABORT goes to a peer.
``guard=True`` is the other way round: before each probe, ``MPI_Test`` of a receive that never
completes drives progress first, so that an error met there ends this process rather than
travel over the link as a COMM_ABORT. tests/integration/test_mpi_abort.py measures both.
"""

from __future__ import annotations

import ctypes
import logging
import time
from typing import Any

from cloudland.errors import WireError
from cloudland_launcher import wire
from cloudland_launcher.doorbell import Doorbell
from cloudland_proto.v1 import envelope_pb2 as pb

log = logging.getLogger(__name__)

TAG = 7  # every envelope travels on one tag; its body says what it is
GUARD_TAG = 8  # nothing is ever sent on it: a guarded link's never-completing receive (module docstring)
_PARKED: list[Any] = []  # closed contained links' communicators and requests: never freed (module docstring)


def _is_complete_fn() -> Any:
    """MPICH's ``MPIX_Request_is_complete`` from the libmpi this process loaded (it drives no progress)."""
    with open("/proc/self/maps") as maps:
        paths = sorted({line.split()[-1] for line in maps if "/libmpi.so" in line})
    if not paths:
        raise RuntimeError("libmpi is not loaded: import MPI first (cloudland.mpienv.import_mpi)")
    fn = ctypes.CDLL(paths[0]).MPIX_Request_is_complete
    fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
    return fn


_is_complete: Any = None


def request_is_complete(request: Any) -> bool:
    """True if ``request`` has completed, found without driving MPI's progress (so without meeting
    any peer's error). MPICH's MPI_Request is a C int; mpi4py gives it unsigned."""
    global _is_complete
    if _is_complete is None:
        _is_complete = _is_complete_fn()
    handle = request.handle
    return bool(_is_complete(handle - (1 << 64) if handle >= 1 << 63 else handle))


class Link:
    """An intercommunicator to one peer process (rank 0 on the far side)."""

    def __init__(self, mpi: Any, comm: Any, name: str, doorbell: Doorbell | None = None,
                 contain: bool = False, guard: bool = False) -> None:
        self._mpi = mpi
        self.comm = comm
        self.name = name
        self.contain = contain  # no call that could end this process on a peer's death (module docstring)
        self._incoming: list[tuple[Any, bytearray]] = []  # contained receives still arriving, in order
        self._guard_buffer = bytearray(1)
        self._guard = comm.Irecv([self._guard_buffer, mpi.BYTE], source=0, tag=GUARD_TAG) if guard else None
        self.doorbell = doorbell
        self.peer_pid = 0  # set once the peer is known to share our host: then we ring it
        self._outbox: list[tuple[Any, bytes]] = []
        self._status = mpi.Status()
        self.closed = False
        self.errors = 0
        comm.Set_errhandler(mpi.ERRORS_RETURN)

    def send(self, data: bytes, ring: bool = True) -> None:
        """Queue ``data`` for the peer (dropped, and the error counted, if MPI refuses it).

        ``ring``: push it onto the wire and wake the peer now. A sender with several
        messages to send passes False and calls ``ring`` on each link after the last.
        """
        try:
            request = self.comm.Isend([data, self._mpi.BYTE], dest=0, tag=TAG)
        except self._mpi.Exception as exc:
            self._error(exc, "send")
            return
        self._outbox.append((request, data))  # keep the buffer alive until sent
        if ring:
            self.ring()

    def ring(self) -> None:
        """Push what is queued onto the wire, then wake the peer if it shares our host.

        With manual progress an ``Isend`` only queues; the bytes leave at our next MPI call.
        One ``Test`` is that call (it progresses every link), so the peer, once woken, finds
        the message instead of an empty socket.
        """
        if self._outbox:
            try:
                if self.contain:
                    self.comm.Iprobe(source=0, tag=TAG)  # progress through the link, not the request
                else:
                    self._outbox[-1][0].Test()
            except self._mpi.Exception:
                pass  # the next poll sees and counts the error
        if self.peer_pid and self.doorbell:
            self.doorbell.ring(self.peer_pid)

    def poll(self, again: bool = True) -> list[bytes]:
        """Complete finished sends and return every message waiting on this link.

        ``again``: probe a second time when the first finds nothing. With manual progress
        (the ``sockets`` provider as MPICH drives it) one probe often reads only part of an
        arrived message off the socket, and any probe progresses every link: a rank polling
        several links passes False and lets the next link's probe finish the read.
        """
        mpi = self._mpi
        received: list[bytes] = []
        try:
            if self._outbox:
                self._outbox = [(r, d) for r, d in self._outbox if not self._done(r)]
            if self._guard is not None:
                self._guard.Test()  # progress here first: an error met here ends us, not our parent
            while True:
                message = self.comm.Improbe(source=0, tag=TAG, status=self._status)
                if message is None and not received and not self._incoming and again:
                    message = self.comm.Improbe(source=0, tag=TAG, status=self._status)
                if message is None:
                    break
                buffer = bytearray(self._status.Get_count(mpi.BYTE))
                if self.contain:  # completed by later probes' progress, delivered in order below
                    self._incoming.append((message.Irecv([buffer, mpi.BYTE]), buffer))
                else:
                    message.Recv([buffer, mpi.BYTE])
                    received.append(buffer)
            while self._incoming and self._done(self._incoming[0][0]):
                received.append(self._incoming.pop(0)[1])
            return received
        except mpi.Exception as exc:
            self._error(exc, "poll")
            if self._outbox:  # a request that failed stays failed: drop what cannot be sent
                gone = request_is_complete if self.contain else _failed  # a contained link never tests an open one
                self._outbox = [(r, d) for r, d in self._outbox if not gone(r)]
            while self._incoming and request_is_complete(self._incoming[0][0]):
                request, buffer = self._incoming.pop(0)
                try:  # completed: its test drives no progress
                    request.Test()
                    received.append(buffer)
                except mpi.Exception as failed:  # ended in error: dropped, not tested again
                    self._error(failed, "receive")
            return received

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for queued sends to complete (used when leaving)."""
        end = time.monotonic() + timeout
        while self._outbox and time.monotonic() < end:
            try:
                if self.contain:
                    self.comm.Iprobe(source=0, tag=TAG)
                self._outbox = [(r, d) for r, d in self._outbox if not self._done(r)]
            except self._mpi.Exception:
                return False
            time.sleep(0.001)
        return not self._outbox

    def _done(self, request: Any) -> bool:
        """Test ``request``; a contained link tests only what has completed (no progress, module docstring)."""
        if self.contain and not request_is_complete(request):
            return False
        return bool(request.Test())

    def close(self) -> None:
        """Release the link. ``Free``, never ``Disconnect``: that hangs if the peer is dead."""
        if self.closed:
            return
        self.closed = True
        if self.contain:  # MPI_Cancel and MPI_Comm_free can meet a dead peer's error and end us
            _PARKED.append((self.comm, self._outbox, self._incoming))
            self._outbox, self._incoming = [], []
            return
        for request, _ in self._outbox + ([(self._guard, b"")] if self._guard is not None else []):
            try:
                request.Cancel()
            except self._mpi.Exception:
                pass
        self._outbox.clear()
        try:
            self.comm.Free()
        except self._mpi.Exception as exc:
            log.debug("event=link_free_failed peer=%s error=%s", self.name, exc)

    def _error(self, exc: Any, during: str) -> None:
        """Count an MPI error seen on this link; log the first and then one in a hundred."""
        self.errors += 1
        if self.errors == 1 or self.errors % 100 == 0:
            try:
                klass = exc.Get_error_class()
            except Exception:  # noqa: BLE001 - classifying is only for the log
                klass = -1
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            log.info("event=mpi_error peer=%s during=%s class=%s count=%d error=%s", self.name, during, klass,
                     self.errors, first_line)


def _failed(request: Any) -> bool:
    """True if ``request`` completed or cannot complete (its test raises)."""
    try:
        return bool(request.Test())
    except Exception:  # noqa: BLE001 - an erroring request will not complete either
        return True


def decode_all(raw: list[bytes], sender: str, on_reject: Any) -> list[pb.Envelope]:
    """Decode messages from ``sender``; garbage goes to ``on_reject`` and is never acted on."""
    out = []
    for data in raw:
        try:
            out.append(wire.decode(data, sender))
        except WireError as exc:
            on_reject(exc)
    return out


class Backoff:
    """Adaptive idle sleep: short right after activity, doubling up to a ceiling.

    A rank blocked in an MPI receive spins a whole core (the reference measured
    30-100x slowdowns on 2 cores), so waiting ranks sleep between polls. The
    sleep waits on the rank's doorbell, so a peer on this host, or local work
    (a gRPC request, a finished operation: ``notify``), wakes it at once.
    """

    def __init__(self, max_sleep: float, min_sleep: float = 50e-6) -> None:
        self.min_sleep = min_sleep
        self.max_sleep = max_sleep
        self.remote_max_sleep = max_sleep
        self.local_max_sleep = max_sleep
        self.current = min_sleep
        self.all_rung = False  # every peer shares our host and rings us (set_ceiling)
        self.doorbell = Doorbell()

    def activity(self) -> None:
        self.current = self.min_sleep

    def set_ceiling(self, all_peers_local: bool) -> None:
        """Sleep long only when every peer rings our doorbell (§7); remote peers are polled."""
        self.max_sleep = self.local_max_sleep if all_peers_local else self.remote_max_sleep
        self.all_rung = all_peers_local
        self.current = min(self.current, self.max_sleep)

    def notify(self) -> None:
        """Wake the loop now; safe from any thread."""
        self.doorbell.ring_self()

    def idle(self) -> None:
        if self.doorbell.wait(self.current):
            self.current = self.min_sleep
        else:
            self.current = min(self.current * self._step(), self.max_sleep)

    def _step(self) -> int:
        """How fast the sleep grows. When every peer rings us after pushing its message onto
        the wire, a poll soon after activity only catches a message read in part: grow
        eightfold toward the ceiling. Measured at 1,000 hypervisors on 2 cores: the leaves'
        CPU per broadcast fell by a third (about 90 to 60 ms) and the broadcast by a fifth; growing
        32-fold made broadcasts 50 % slower. Remote peers do not ring: poll them closely."""
        return 8 if self.all_rung else 2
