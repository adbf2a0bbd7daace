"""What the console routes ask of an instance's own hypervisor, apart from HTTP.

Both consoles, the serial one (a WebSocket) and the graphical one (a VNC address), need an
instance of the caller's organisation that has a domain on a hypervisor, and ask that
hypervisor's agent live through the tree. The tree's failures become TreeError (HTTP 503),
the agent's AgentFailed (502, its message naming the hypervisor); an instance without the
console asked for is a Conflict (409) that says why.

A browser cannot set an ``Authorization`` header on a WebSocket, and a token in its URL would
be logged: it asks for a ``ConsoleTickets`` ticket first and puts that in the URL (issue 15).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from google.protobuf.message import Message
from sqlalchemy.orm import Session

from cloudland.addresses import is_unspecified
from cloudland import operations
from cloudland.client import RootClient
from cloudland.errors import AgentFailed, Conflict, Overloaded, TreeError, Unauthorized
from cloudland_api.services import hypervisors, instances
from cloudland_api.models import Hypervisor
from cloudland_api.services.identity import Caller
from cloudland_proto.v1 import compute_pb2 as cpb
from cloudland_proto.v1 import envelope_pb2 as pb

CALL_TIMEOUT_S = 10.0
# Replies that say the tree could not reach the agent, rather than that the agent failed.
_TREE_STATUSES = (pb.TIMEOUT, pb.UNAVAILABLE, pb.UNKNOWN_HYPERVISOR)
TICKET_LIFETIME_S = 30
MAX_TICKETS = 10_000


@dataclass(frozen=True)
class Target:
    """An instance with a domain, and where that domain is."""

    instance: int
    name: str
    hypervisor: int
    hostname: str  # the hypervisor's, as its agent reports it
    domain: str

    def __str__(self) -> str:
        return f"instance {self.instance} ({self.name}) on hypervisor {self.hypervisor}"


def target(session: Session, caller: Caller, instance_id: int) -> Target:
    """The caller's instance ``instance_id`` and its domain; NotFound, or Conflict while it is
    building, deleting or deleted (it has no domain to attach to) or its hypervisor is gone or
    removed (nothing there can be reached). Any role may ask."""
    instance = instances.get_instance(session, caller, instance_id)
    if instance.hypervisor_id is None or instance.status in ("deleted", "deleting", "building"):
        raise Conflict(f"instance {instance_id} ({instance.name}) is {instance.status}: "
                       "it has no domain to attach to")
    # Instances reference their hypervisor's row, so it exists.
    hypervisor = session.get(Hypervisor, instance.hypervisor_id)
    if hypervisor is not None and hypervisor.state in hypervisors.LOST:
        raise hypervisors.unreachable(f"attach to the consoles of instance {instance_id} ({instance.name})",
                                      hypervisor.id, hypervisor.state)
    hostname = hypervisor.hostname if hypervisor is not None else ""
    return Target(instance.id, instance.name, instance.hypervisor_id, hostname, instance.domain_name)


def ask_agent(client: RootClient | None, operation: str, hypervisor: int, request: Message) -> Message:
    """The result message of ``operation`` run now with ``request`` by ``hypervisor``'s agent.
    Blocks up to CALL_TIMEOUT_S: call it from a worker thread."""
    if client is None:
        raise TreeError("no tree is configured (CLOUDLAND_API_ROOT_ENDPOINT is empty)")
    replies = client.run(operation, hypervisor, request=request, timeout=CALL_TIMEOUT_S)  # RootUnreachable, TreeError
    reply = next((r for r in replies if r.hypervisor == hypervisor), None)
    if reply is None:
        raise TreeError(f"{operation}: no reply from hypervisor {hypervisor}")
    if reply.status == pb.OK:
        result = operations.result_of(reply, operation)  # InvalidRequest: not the operation's type
        assert result is not None
        return result
    status = pb.Status.Name(reply.status)
    if reply.status in _TREE_STATUSES:
        detail = f": {reply.error}" if reply.error else ""
        raise TreeError(f"{operation}: hypervisor {hypervisor} did not answer ({status}){detail}")
    raise AgentFailed(hypervisor, reply.error or f"{operation}: {status} (hypervisor {hypervisor})")


def vnc_endpoint(where: Target, record: cpb.VmRecord) -> tuple[str, int]:
    """(host, port) a VNC client reaches the display of ``record`` (vm.get's) at: its listen
    address, or the hypervisor's hostname when it listens on every interface.

    Conflict when the domain has no display now: on a simulated hypervisor (libvirt test:///,
    which runs no guest), without one, or while it does not run (libvirt gives the port at start).
    """
    listen, port, state = record.vnc_listen, record.vnc_port, record.state
    if record.domain_type == "test":
        raise Conflict(f"{where} has no graphical console: hypervisor {where.hypervisor} is simulated "
                       "(libvirt test:///), and its guests have no VNC display")
    if not listen:
        raise Conflict(f"{where} has no graphical console: its domain has no VNC display")
    if port <= 0:
        if state == "running":
            raise Conflict(f"{where} is running but its VNC display has no port yet: try again")
        raise Conflict(f"{where} is {state}: its VNC display listens only while it runs")
    host = where.hostname if is_unspecified(listen) and where.hostname else listen
    return host, port


@dataclass(frozen=True)
class _Held:
    user_id: int
    org_id: int
    instance: int
    expires: float  # on the monotonic clock


def _digest(ticket: str) -> str:
    return hashlib.sha256(ticket.encode()).hexdigest()


class ConsoleTickets:
    """One-time tickets that open one instance's console WebSocket as their user.

    A ticket is 32 random bytes (base64url), good for one connection to one instance within
    ``lifetime_s`` of its issue. Only its SHA-256 is kept, in this process's memory (the API is
    one process; a restart voids every ticket), and at most ``limit`` at once: past that, the
    caller is told to come back once some expired (Overloaded, 429).
    """

    def __init__(self, lifetime_s: int = TICKET_LIFETIME_S, limit: int = MAX_TICKETS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.lifetime_s, self.limit, self._clock = lifetime_s, limit, clock
        self._lock = threading.Lock()  # routes run in worker threads
        self._held: dict[str, _Held] = {}  # insertion order is expiry order: one lifetime for all

    def issue(self, caller: Caller, instance_id: int) -> tuple[str, datetime]:
        """A new ticket for ``caller`` to open ``instance_id``'s console, and when it expires."""
        now = self._clock()
        with self._lock:
            while self._held:
                oldest = next(iter(self._held))
                if self._held[oldest].expires > now:
                    break
                del self._held[oldest]
            if len(self._held) >= self.limit:
                raise Overloaded(f"{self.limit} console tickets are outstanding: retry in {self.lifetime_s} s",
                                 retry_after_s=self.lifetime_s)
            ticket = secrets.token_urlsafe(32)
            self._held[_digest(ticket)] = _Held(caller.user_id, caller.org_id, instance_id, now + self.lifetime_s)
        return ticket, (datetime.now(UTC) + timedelta(seconds=self.lifetime_s)).replace(microsecond=0)

    def redeem(self, ticket: str, instance_id: int) -> tuple[int, int]:
        """The (user id, organisation id) a valid ticket for ``instance_id`` speaks for; the ticket is
        used up, whatever follows. Unauthorized if it is unknown, used, expired or for another instance."""
        with self._lock:
            held = self._held.pop(_digest(ticket), None)
        if held is None or held.expires <= self._clock():
            raise Unauthorized("console ticket unknown, used or expired: ask POST .../console/ticket for another")
        if held.instance != instance_id:
            raise Unauthorized(f"the console ticket is not for instance {instance_id}")
        return held.user_id, held.org_id
