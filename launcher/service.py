"""The gRPC service of the root (proto/v1/root.proto), validating every request.

Only the control plane may call it (proto/README.md §8): the port takes mutual TLS with a
certificate of the tree's CA (cloudland/pki.py), and every call checks that the caller's is
a control certificate (a host's node certificate is refused with PERMISSION_DENIED). Bad
requests end with INVALID_ARGUMENT and a message naming the field; they never reach the tree.
"""

from __future__ import annotations

import functools
import queue
import re
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any, TypeVar

import grpc

from cloudland import pki
from cloudland_launcher.root import END, DuplicateJob, Root
from cloudland_proto.v1 import envelope_pb2 as pb
from cloudland_proto.v1 import root_pb2, root_pb2_grpc

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")  # used with fullmatch
MAX_TARGETS = 1_000_000
MAX_DEADLINE_S = 24 * 3600


def validate(command: pb.Command, default_deadline_s: float) -> str:
    """Return what is wrong with ``command`` (empty if nothing); fills a missing deadline."""
    if not NAME.fullmatch(command.job_id):
        return f"job_id {command.job_id!r} must be 1-128 characters of letters, digits and ._:-"
    if not NAME.fullmatch(command.operation):
        return f"operation {command.operation!r} must be 1-128 characters of letters, digits and ._:- (job {command.job_id})"
    kind = command.targets.WhichOneof("kind")
    if kind is None:
        return f"targets must name a hypervisor, a set or all (job {command.job_id})"
    if kind == "all" and not command.targets.all:
        return f"targets.all must be true for a broadcast (job {command.job_id})"
    if kind == "set" and not 0 < len(command.targets.set.ids) <= MAX_TARGETS:
        return f"targets.set must hold 1 to {MAX_TARGETS} ids, got {len(command.targets.set.ids)} (job {command.job_id})"
    now_ms = int(time.time() * 1000)
    if command.deadline_ms == 0:
        command.deadline_ms = now_ms + int(default_deadline_s * 1000)
    elif command.deadline_ms > now_ms + MAX_DEADLINE_S * 1000:
        return f"deadline_ms is more than {MAX_DEADLINE_S // 3600} h ahead (job {command.job_id})"
    return ""


Handler = TypeVar("Handler", bound=Callable[..., Any])


def control_only(handler: Handler) -> Handler:
    """Refuse a caller whose certificate is not the control plane's (PERMISSION_DENIED)."""
    @functools.wraps(handler)
    def checked(self: RootService, request: Any, context: grpc.ServicerContext) -> Any:
        names = context.auth_context().get("x509_common_name", [])
        if names != [(pki.PREFIX + pki.CONTROL).encode()]:
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"only the control plane may drive the tree; the caller's certificate names {names}")
        return handler(self, request, context)
    return checked  # type: ignore[return-value]


class RootService(root_pb2_grpc.RootServicer):
    def __init__(self, root: Root) -> None:
        self.root = root

    @control_only
    def Dispatch(self, request: root_pb2.DispatchRequest, context: grpc.ServicerContext) -> Iterator[pb.ReplyBatch]:
        command = request.command
        problem = validate(command, self.root.settings.deadline_s)
        if problem:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        out: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.root.submit("dispatch", command, out)
        while True:
            item = out.get()
            if item is END:
                return
            if isinstance(item, DuplicateJob):
                context.abort(grpc.StatusCode.ALREADY_EXISTS, str(item))
            yield item

    @control_only
    def Topology(self, request: root_pb2.TopologyRequest, context: grpc.ServicerContext) -> root_pb2.TopologyReply:
        future: futures.Future[root_pb2.TopologyReply] = futures.Future()
        self.root.submit("topology", future)
        return _answer(future, context, "topology")

    @control_only
    def Health(self, request: root_pb2.HealthRequest, context: grpc.ServicerContext) -> root_pb2.HealthReply:
        future: futures.Future[root_pb2.HealthReply] = futures.Future()
        self.root.submit("health", request, future)
        return _answer(future, context, "health")

    @control_only
    def Hosts(self, request: root_pb2.HostsRequest, context: grpc.ServicerContext) -> root_pb2.HostsReply:
        future: futures.Future[root_pb2.HostsReply] = futures.Future()
        self.root.submit("hosts", future)
        return _answer(future, context, "hosts")

    @control_only
    def RemoveHost(self, request: root_pb2.RemoveHostRequest, context: grpc.ServicerContext) -> root_pb2.HostInfo:
        if not request.name:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name: the host to remove is required")
        future: futures.Future[root_pb2.HostInfo | None] = futures.Future()
        self.root.submit("remove_host", request.name, future)
        info = _answer(future, context, "remove host")
        if info is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no host named {request.name!r} has joined the tree")
        return info


    @control_only
    def Watch(self, request: root_pb2.WatchRequest, context: grpc.ServicerContext) -> Iterator[root_pb2.WatchEvent]:
        hub = self.root.watch
        sub = hub.subscribe({k.hypervisor: (k.incarnation, k.generation) for k in request.known})
        try:
            while context.is_active() and not sub.closed:
                event = hub.take(sub, timeout=1.0)
                if event is not None:
                    yield event
        finally:
            hub.unsubscribe(sub)


def _answer(future: futures.Future[Any], context: grpc.ServicerContext, what: str) -> Any:
    try:
        return future.result(timeout=10)
    except futures.TimeoutError:
        # The loop is busy (e.g. spawning ranks while the tree is built): try again.
        context.abort(grpc.StatusCode.UNAVAILABLE, f"the root did not answer {what} within 10 s (busy)")


def serve(root: Root, address: str, pki_dir: Path) -> grpc.Server:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=512, thread_name_prefix="grpc"),  # a thread per open Dispatch stream
        options=[("grpc.max_send_message_length", 256 << 20)],
    )
    root_pb2_grpc.add_RootServicer_to_server(RootService(root), server)
    if server.add_secure_port(address, pki.grpc_server_credentials(pki_dir)) == 0:
        from cloudland.errors import ConfigError

        raise ConfigError(f"cannot listen on {address} (CLOUDLAND_GRPC): in use or invalid")
    server.start()
    return server
