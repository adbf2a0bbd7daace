"""A leaf agent rank: hosts one hypervisor (production) or many simulated ones.

Run by its host agent as ``python -m cloudland_launcher.boot cloudland_agents.leaf``. Commands fan
out to the hypervisors it hosts; inline operations run on the MPI thread, the others
on worker threads whose results are picked up by the loop. Replies go up in
batches; heartbeats carry the resource reports that changed.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from cloudland import operations, procinfo
from cloudland.errors import CloudLandError, HypervisorError, InvalidRequest
from cloudland.statedir import open_for_qemu
from cloudland.topology import Shape
from cloudland_agents import ops
from cloudland_agents.compute import console_ops as _console_ops  # noqa: F401 - registers vm.console
from cloudland_agents.compute import ops as _compute_ops  # noqa: F401 - registers the vm.* operations
from cloudland_agents.images import ops as _image_ops  # noqa: F401 - registers image.evict
from cloudland_agents.compute.nics import guests_for, plays_guests
from cloudland_agents.network.names import DEFAULT_PREFIX, Names
from cloudland_agents.network.fake import simulated_vtep
from cloudland_agents.network.ops import Network, Repairable, network_for, repair_loop, simulated  # net.*
from cloudland_agents.hypervisor import Hypervisor, open_simulated, underlay_address
from cloudland_agents.simdomains import CHANGES_DOMAINS, domain_named
from cloudland_agents.storage.ops import load_rbd_backends, storage_for, volumes_of  # registers vol.*
from cloudland_launcher.rank import URGENT_S, ChildRank
from cloudland_proto.v1 import envelope_pb2 as pb

log = logging.getLogger(__name__)


class Leaf(ChildRank):
    def setup(self) -> None:
        settings = MessageToDict(self.assign.agent)
        self.test_ops = bool(settings.get("test_ops", False))
        shape = Shape(self.assign.hypervisors, self.assign.per_leaf, self.assign.fanout)
        ids = shape.hypervisors_of(self.node)
        state_dir = self.state_dir  # this host's, from its host agent (the root's may be elsewhere)
        vtep = underlay_address(self.listen_host)  # the host's address on the underlay (issue 11)
        if settings.get("driver", "test") == "test":
            # Their domains outlive us, as a real hypervisor's outlive its agent (agents/simdomains.py).
            self.hypervisors = {hv: open_simulated(hv, state_dir, vtep, saved=True) for hv in ids}
        else:
            # QEMU runs as its own user and reaches its guests' files under our state directory:
            # the one exception to private state (cloudland/statedir.py).
            open_for_qemu(state_dir)
            uri = settings.get("libvirt_uri", "qemu:///system")
            vnc_listen = settings.get("vnc_listen", "127.0.0.1")
            self.hypervisors = {hv: Hypervisor(hv, uri, procinfo.HOSTNAME, state_dir, vnc_listen, vtep)
                                for hv in ids}
        # The data plane (agents/network/): made now, so it reads its held state at the start.
        network, prefix = settings.get("network", ""), Names(settings.get("network_prefix") or DEFAULT_PREFIX)
        kernel: list[Repairable] = []
        for hypervisor in self.hypervisors.values():
            fake = network == "fake" or (not network and simulated(hypervisor))
            # netns: each simulated hypervisor the kernel's plane in a namespace of its own (hostns.py)
            own = network == "netns" and simulated(hypervisor)
            if (fake or own) and simulated(hypervisor):  # a host of its own to the control plane (fake.py)
                hypervisor.vtep = simulated_vtep(hypervisor.id)
            network_for.set(hypervisor, Network(hypervisor, prefix, fake=fake, own_namespace=own))
            kernel += [] if fake else [network_for(hypervisor)]
            # Test guests play its VMs' NICs (agents/compute/nics.py): repaired after the network.
            kernel += [guests_for(hypervisor)] if plays_guests(hypervisor) else []
        # Volumes (agents/storage/): local files, and the operator's Ceph pools if configured.
        rbd = load_rbd_backends(settings.get("rbd_backends", ""))
        for hypervisor in self.hypervisors.values():
            storage_for.set(hypervisor, volumes_of(hypervisor, rbd))
        self.repair_stop = threading.Event()
        if kernel:  # a fake cannot drift
            threading.Thread(target=repair_loop, args=(kernel, self.repair_stop), name="net-repair", daemon=True).start()
        self.pool = ThreadPoolExecutor(max_workers=int(settings.get("workers", 32)), thread_name_prefix="op")
        # Filled by worker threads: (job, hypervisor, reply, whether the hypervisor's report may have changed).
        self.done: deque[tuple[str, int, pb.Reply | None, bool]] = deque()
        self.in_progress: Counter[str] = Counter()
        self.sent_reports: dict[int, pb.HypervisorReport] = {}
        # Reports carry this process's start id and a generation per hypervisor (§6.1).
        self.incarnation = uuid.uuid4().hex
        self.touched: set[int] = set()  # hypervisors an operation ended on: reported now, not at the beat
        self._next_urgent = 0.0

    def on_command(self, command: pb.Command) -> None:
        kind = command.targets.WhichOneof("kind")
        if kind == "all":
            targets = list(self.hypervisors)
        elif kind == "hypervisor":
            targets = [command.targets.hypervisor]
        else:
            targets = list(command.targets.set.ids)
        op = ops.lookup(command.operation, self.test_ops)
        request: Message | None = None
        refused = ""
        if op is not None:
            try:
                request = operations.request_of(command)
            except InvalidRequest as exc:  # a request of another type: refused before any work
                refused = str(exc)
            if request is not None and op.check is not None:
                try:  # once for all its targets here (agents/ops.py Operation.check)
                    op.check(request)
                except InvalidRequest as exc:
                    request, refused = None, f"{op.name}: {exc}"
        left = (command.deadline_ms - procinfo.now_ms()) / 1000 if command.deadline_ms else 0.0
        deadline = time.monotonic() + left if command.deadline_ms else 0.0
        if command.deadline_ms and left <= 0:
            # The root has answered TIMEOUT already (§4): running it now would be unasked-for work.
            log.info("event=command_expired job=%s op=%s", command.job_id, command.operation)
            return
        batch: list[int] = []  # a batched operation's targets here: one worker task for all
        for hv in targets:
            if hv not in self.hypervisors:
                self.buffer.add_reply(_reply(command.job_id, hv, pb.UNKNOWN_HYPERVISOR,
                                             f"hypervisor {hv} is not hosted by {self.node} (job {command.job_id})"))
            elif op is None:
                self.buffer.add_reply(_reply(command.job_id, hv, pb.UNKNOWN_OPERATION,
                                             f"unknown operation {command.operation!r} (hypervisor {hv}, job {command.job_id})"))
            elif request is None:
                self.buffer.add_reply(_reply(command.job_id, hv, pb.INVALID_ARGUMENT,
                                             f"{refused} (hypervisor {hv}, job {command.job_id})"))
            elif op.inline:
                self._collect(command.job_id, hv, self._execute(op, hv, command.job_id, request, deadline))
            elif op.batched:
                self.in_progress[command.job_id] += 1
                batch.append(hv)
            else:
                self.in_progress[command.job_id] += 1
                self.pool.submit(self._in_worker, op, [hv], command.job_id, request, deadline)
        if batch:
            assert op is not None and request is not None
            self.pool.submit(self._in_worker, op, batch, command.job_id, request, deadline)

    def _in_worker(self, op: ops.Operation, hvs: list[int], job_id: str, request: Message, deadline: float) -> None:
        for hv in hvs:
            self.done.append((job_id, hv, self._execute(op, hv, job_id, request, deadline), op.reports))
        self.backoff.notify()

    def _collect(self, job_id: str, hv: int, reply: pb.Reply | None) -> None:
        """Buffer a result: ``None`` is OK without payload, which travels in the compact form."""
        if reply is None:
            self.buffer.add_ok(job_id, hv)
        else:
            self.buffer.add_reply(reply)

    def _execute(
        self, op: ops.Operation, hv: int, job_id: str, request: Message, deadline: float
    ) -> pb.Reply | None:
        hypervisor = self.hypervisors[hv]
        ctx = ops.Context(hypervisor, job_id, deadline, self.send_raw, checked=op.check is not None)
        try:
            try:
                result = op.run(ctx, request)
            finally:
                if op.name in CHANGES_DOMAINS:  # before the reply: an effect not saved was not reported either
                    hypervisor.persist(domain_named(op.name, request))
            plain = result is None or not result.ByteSize() or (op.compact is not None and op.compact(request, result))
            packed = None if plain else operations.pack_result(op.name, result)
        except InvalidRequest as exc:
            return _reply(job_id, hv, pb.INVALID_ARGUMENT, f"{op.name}: {exc} (hypervisor {hv}, job {job_id})")
        except HypervisorError as exc:
            return _reply(job_id, hv, pb.FAILED, f"{op.name}: {exc}")
        except (CloudLandError, Exception) as exc:  # noqa: BLE001 - a crash becomes a FAILED reply
            log.exception("event=operation_crashed op=%s hypervisor=%s job=%s", op.name, hv, job_id)
            return _reply(job_id, hv, pb.FAILED, f"{op.name} crashed: {exc!r} (hypervisor {hv}, job {job_id})")
        if packed is None:
            return None
        return pb.Reply(job_id=job_id, hypervisor=hv, status=pb.OK, result=packed)

    def work(self) -> bool:
        if not self.done:
            return False
        while self.done:
            job_id, hv, reply, reports = self.done.popleft()
            if reports:
                self.touched.add(hv)
            self.in_progress[job_id] -= 1
            if self.in_progress[job_id] <= 0:
                del self.in_progress[job_id]
            self._collect(job_id, hv, reply)
        return True

    def pending(self, job_id: str) -> int:
        return self.in_progress.get(job_id, 0)

    def inventory(self) -> list[pb.HypervisorReport]:
        self.touched.clear()
        for hv in self.hypervisors:
            self._stamped(hv)
        return list(self.sent_reports.values())

    def changed_reports(self) -> list[pb.HypervisorReport]:
        self.touched.clear()
        return [r for r in map(self._stamped, self.hypervisors) if r is not None]

    def urgent_reports(self) -> list[pb.HypervisorReport]:
        """The reports of hypervisors an operation ended on, at most every URGENT_S."""
        if not self.touched or time.monotonic() < self._next_urgent:
            return []
        self._next_urgent = time.monotonic() + URGENT_S
        touched, self.touched = self.touched, set()
        return [r for r in map(self._stamped, sorted(touched)) if r is not None]

    def _stamped(self, hv: int) -> pb.HypervisorReport | None:
        """``hv``'s report now, with our incarnation and its generation bumped, if it differs from the
        last one sent; None if it does not."""
        report = self.hypervisors[hv].report()
        sent = self.sent_reports.get(hv)
        report.incarnation = self.incarnation
        report.generation = sent.generation if sent is not None else 0
        if report == sent:
            return None
        report.generation += 1
        self.sent_reports[hv] = report
        return report

    def leave(self, reason: str) -> None:
        self.repair_stop.set()
        self.pool.shutdown(wait=False, cancel_futures=True)


def _reply(job_id: str, hv: int, status: int, error: str = "") -> pb.Reply:
    return pb.Reply(job_id=job_id, hypervisor=hv, status=status, error=error)


if __name__ == "__main__":
    Leaf().run()
