"""A thin client of the root's gRPC service, used by the CLI, the tests and the benchmarks."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message

from cloudland import operations, pki
from cloudland.config import DEFAULT_GRPC
from cloudland.errors import ConfigError, InvalidRequest, NotFound, RootUnreachable, TreeError
from cloudland_proto.v1 import envelope_pb2 as pb
from cloudland_proto.v1 import root_pb2, root_pb2_grpc

ALL = None


MAX_ID = 2**32 - 1


def make_targets(targets: int | Iterable[int] | None) -> pb.Targets:
    """A unicast for an int, a multicast for an iterable, a broadcast for ALL (None)."""
    if targets is ALL:
        return pb.Targets(all=True)
    ids = [targets] if isinstance(targets, int) else list(targets)
    bad = [t for t in ids if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= MAX_ID]
    if bad or not ids:
        raise InvalidRequest(f"targets must be hypervisor ids in 0..{MAX_ID}, got {bad[:5] or 'none'}")
    if isinstance(targets, int):
        return pb.Targets(hypervisor=targets)
    return pb.Targets(set=pb.HypervisorSet(ids=ids))


def new_job_id() -> str:
    """A fresh, unique job id."""
    return uuid.uuid4().hex


class RootClient:
    """Talks to one root rank. Errors surface as CloudLand errors, not grpc.RpcError.

    Over mutual TLS (proto/README.md §8): it presents the control certificate of ``pki``
    (default: ``$CLOUDLAND_PKI``, else ``<$CLOUDLAND_STATE_DIR or var>/pki``) and takes only a
    root certified by the same CA. Credentials are read at the first call, so a client made
    before the root's first start (which makes them) works once they exist; until then each
    call raises RootUnreachable saying where it looked.
    """

    def __init__(self, endpoint: str = DEFAULT_GRPC, pki_dir: Path | None = None) -> None:
        self.endpoint = endpoint
        self.pki_dir = pki_dir or pki.default_dir()
        self._channel: grpc.Channel | None = None
        self._root_stub: root_pb2_grpc.RootStub | None = None
        self._closed = False

    @property
    def _stub(self) -> root_pb2_grpc.RootStub:
        if self._root_stub is None:
            if self._closed:
                raise RootUnreachable(f"the client of {self.endpoint} is closed")
            try:
                creds = pki.Credentials.load(self.pki_dir, pki.CONTROL)
            except ConfigError as exc:
                raise RootUnreachable(str(exc)) from exc
            self._channel = grpc.secure_channel(
                self.endpoint,
                grpc.ssl_channel_credentials(creds.ca, creds.key, creds.cert),
                options=[
                    ("grpc.max_receive_message_length", 256 << 20),
                    # The root is named by its certificate, whatever address reaches it.
                    ("grpc.ssl_target_name_override", pki.ROOT_NAME),
                    # Notice a root that comes up within a second, not after gRPC's
                    # default reconnect backoff (which grows towards 120 s).
                    ("grpc.initial_reconnect_backoff_ms", 200),
                    ("grpc.max_reconnect_backoff_ms", 1000),
                ],
            )
            self._root_stub = root_pb2_grpc.RootStub(self._channel)
        return self._root_stub

    def close(self) -> None:
        self._closed = True
        if self._channel is not None:
            self._channel.close()

    def __enter__(self) -> RootClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def dispatch(
        self,
        operation: str,
        targets: int | Iterable[int] | None = ALL,
        request: Message | None = None,
        timeout: float = 30.0,
        job_id: str | None = None,
        expand: bool = True,
    ) -> Iterator[pb.ReplyBatch]:
        """Send one command; yield reply batches until every target has answered.

        ``request`` is the operation's request message (cloudland/operations.py); None sends
        none, which the agent reads as the request type's defaults. A dict is a TypeError: the
        request's type is the contract. OK replies without result travel compactly
        (``ReplyBatch.ok``); with ``expand`` they are turned into ordinary ``Reply`` messages.
        Read a reply's result with ``operations.result_of``.
        """
        if request is not None and not isinstance(request, Message):
            raise TypeError(f"{operation}: request must be its request message (cloudland/operations.py), "
                            f"not a {type(request).__name__}")
        command = pb.Command(
            job_id=job_id or new_job_id(),
            targets=make_targets(targets),
            operation=operation,
            deadline_ms=int((time.time() + timeout) * 1000),
        )
        if request is not None:
            command.request.CopyFrom(operations.pack(operation, request))
        try:
            # The root answers every target by the deadline; the margin covers transit only.
            for batch in self._stub.Dispatch(root_pb2.DispatchRequest(command=command), timeout=timeout + 5):
                yield expanded(batch) if expand and batch.ok else batch
        except grpc.RpcError as exc:
            raise self._translate(exc, f"dispatch of job {command.job_id}") from exc

    def run(self, operation: str, targets: int | Iterable[int] | None = ALL, **kwargs: Any) -> list[pb.Reply]:
        """Dispatch and gather every reply."""
        return [reply for batch in self.dispatch(operation, targets, **kwargs) for reply in batch.replies]

    def gather(
        self, operation: str, targets: int | Iterable[int] | None = ALL, **kwargs: Any
    ) -> tuple[set[int], list[pb.Reply]]:
        """Dispatch and gather compactly: (hypervisors that answered OK without payload, other replies)."""
        ok, others, _ = self.count(operation, targets, **kwargs)
        return ok, others

    def count(self, operation: str, targets: int | Iterable[int] | None = ALL,
              **kwargs: Any) -> tuple[set[int], list[pb.Reply], int]:
        """As ``gather``, and the tree messages the command cost (proto/README.md §3, "Message
        counts"): (hypervisors that answered OK without payload, other replies, messages)."""
        ok: set[int] = set()
        others: list[pb.Reply] = []
        messages = 0
        for batch in self.dispatch(operation, targets, expand=False, **kwargs):
            for entry in batch.ok:
                ok.update(entry.hypervisors)
            others.extend(batch.replies)
            messages += sum(entry.count for entry in batch.messages)
        return ok, others, messages

    def topology(self, timeout: float = 5.0) -> root_pb2.TopologyReply:
        """The tree's shape and whether every rank is up."""
        try:
            return self._stub.Topology(root_pb2.TopologyRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            raise self._translate(exc, "topology") from exc

    def health(self, reports: bool = False, timeout: float = 5.0) -> root_pb2.HealthReply:
        """Peer states, recent events and (optionally) every hypervisor's report."""
        try:
            return self._stub.Health(root_pb2.HealthRequest(reports=reports), timeout=timeout)
        except grpc.RpcError as exc:
            raise self._translate(exc, "health") from exc

    def watch(self, known: Iterable[root_pb2.ReportVersion] = ()) -> Iterator[root_pb2.WatchEvent]:
        """Observed state as a stream (proto/README.md §8.1): a snapshot, then changes, until the
        root goes away (RootUnreachable); ``known``, the versions held from before, are left out
        of the snapshot. ``close`` the client to end it from another thread."""
        call = self._stub.Watch(root_pb2.WatchRequest(known=list(known)))
        try:
            yield from call
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise self._translate(exc, "watch") from exc
        finally:
            call.cancel()

    def hosts(self, timeout: float = 5.0) -> root_pb2.HostsReply:
        """The hosts that joined the tree (proto/README.md §10.4)."""
        try:
            return self._stub.Hosts(root_pb2.HostsRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            raise self._translate(exc, "hosts") from exc

    def remove_host(self, name: str, timeout: float = 10.0) -> root_pb2.HostInfo:
        """Forget a host: its agent stops its ranks and its slots are freed; NotFound if unknown."""
        try:
            return self._stub.RemoveHost(root_pb2.RemoveHostRequest(name=name), timeout=timeout)
        except grpc.RpcError as exc:
            raise self._translate(exc, f"removal of host {name}") from exc

    def wait_ready(self, timeout: float = 120.0) -> root_pb2.TopologyReply:
        """Block until the root reports every rank up, or raise RootUnreachable."""
        end = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < end:
            try:
                topo = self.topology(timeout=2.0)
                if topo.ready:
                    return topo
            except (RootUnreachable, TreeError) as exc:  # not up yet, or busy spawning ranks
                last = exc
            time.sleep(0.1)
        raise RootUnreachable(f"root at {self.endpoint} not ready after {timeout:.0f} s ({last})")

    def _translate(self, exc: grpc.RpcError, what: str) -> Exception:
        code = exc.code() if hasattr(exc, "code") else None
        detail = exc.details() if hasattr(exc, "details") else str(exc)
        if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS):
            return InvalidRequest(f"{what}: {detail}")
        if code == grpc.StatusCode.NOT_FOUND:
            return NotFound(f"{what}: {detail}")
        if code == grpc.StatusCode.UNAVAILABLE:
            return RootUnreachable(f"{what}: cannot reach the root at {self.endpoint}: {detail}")
        return TreeError(f"{what} at {self.endpoint} failed: {code.name if code else '?'} {detail}")


def supersedes(report: pb.HypervisorReport, held: pb.HypervisorReport | None) -> bool:
    """Whether ``report`` replaces ``held`` (proto/README.md §6.1): a new incarnation (the agent
    started again), or a later generation of the same. Reports without a version (an older
    agent) replace whenever they differ."""
    if held is None or report.incarnation != held.incarnation:
        return True
    if not report.incarnation:
        return report != held
    return report.generation > held.generation


def expanded(batch: pb.ReplyBatch) -> pb.ReplyBatch:
    """``batch`` with its compact OK replies written out as ordinary replies."""
    full = pb.ReplyBatch()
    full.replies.extend(batch.replies)
    full.messages.extend(batch.messages)
    for entry in batch.ok:
        full.replies.extend(pb.Reply(job_id=entry.job_id, hypervisor=hv, status=pb.OK) for hv in entry.hypervisors)
    return full
