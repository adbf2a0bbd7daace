"""A relay rank (the "scia"): forwards commands to the children whose subtree holds
targets, batches their replies into one message up, and watches its children.

Its host agent runs it as ``python -m cloudland_launcher.boot cloudland_launcher.relay --node F:E ...``. It listens
for its children's link requests on its host's address (proto/README.md §10.3) and tells
the root where, in its Hello, so that the root can direct them here.
"""

from __future__ import annotations

import queue
import time

from cloudland_launcher.rank import URGENT_S, ChildRank
from cloudland_launcher.rendezvous import Conn, Listener
from cloudland_launcher.subtree import Subtree
from cloudland_proto.v1 import envelope_pb2 as pb
from cloudland_proto.v1 import link_pb2 as lpb


class Relay(ChildRank):
    relay = True

    def setup(self) -> None:
        self.subtree = Subtree(
            self.mpi, self.assign, self.node, self.buffer.add, self.send_event, self.backoff.doorbell
        )
        self.requests: queue.SimpleQueue[tuple[lpb.Frame, Conn]] = queue.SimpleQueue()
        self.listener = Listener(self.listen_host, self._on_frame, self.tls)
        self.link_address = self.listener.address
        self.subtree.start()
        self._next_urgent = 0.0

    def _on_frame(self, frame: lpb.Frame, sock: Conn, peer: str) -> None:
        """On the listener's thread: only link requests come to a relay; the MPI thread serves them."""
        if frame.WhichOneof("body") != "link":
            self.subtree.refuse(sock, f"{frame.WhichOneof('body')} is not served by {self.node}")
            return
        self.requests.put((frame, sock))
        self.backoff.notify()

    def on_command(self, command: pb.Command) -> None:
        kind = command.targets.WhichOneof("kind")
        share = None if kind == "all" else (
            [command.targets.hypervisor] if kind == "hypervisor" else list(command.targets.set.ids)
        )
        try:
            self.buffer.add(self.subtree.dispatch(command, share))
        except Exception as exc:  # noqa: BLE001 - a bad command must not kill the relay
            self._reject(exc)

    def work(self) -> bool:
        active = False
        while True:
            try:
                frame, sock = self.requests.get_nowait()
            except queue.Empty:
                break
            self.subtree.attach(frame.link, sock)
            active = True
        active |= self.subtree.poll()
        self.subtree.check()
        return active

    def pending(self, job_id: str) -> int:
        return self.subtree.pending(job_id)

    def ready(self) -> bool:
        # Hello at once: our children are started by their hosts and find us through the root,
        # which directs them here only once it has heard our hello (§10.3). Their inventory
        # follows in our heartbeats.
        return True

    def inventory(self) -> list[pb.HypervisorReport]:
        self.subtree.changed.clear()
        return list(self.subtree.reports.values())

    def changed_reports(self) -> list[pb.HypervisorReport]:
        changed = list(self.subtree.changed.values())
        self.subtree.changed.clear()
        return changed

    def urgent_reports(self) -> list[pb.HypervisorReport]:
        """Our children's changes, passed on at most every URGENT_S rather than at our next beat."""
        if not self.subtree.changed or time.monotonic() < self._next_urgent:
            return []
        self._next_urgent = time.monotonic() + URGENT_S
        return self.changed_reports()

    def peers_below(self) -> list[pb.PeerStatus]:
        return self.subtree.peers()

    def children_local(self) -> bool:
        return self.subtree.all_local()

    def replies_in(self) -> int:
        return self.subtree.replies_in

    def subtree_rejected(self) -> int:
        return self.rejected + self.subtree.subtree_rejected()

    def leave(self, reason: str) -> None:
        self.subtree.shutdown(reason)


if __name__ == "__main__":
    Relay().run()
