"""A relay rank (the "scia"): forwards commands to the children whose subtree holds
targets, batches their replies into one message up, and heals its children.

Run by its parent as ``python -m cloudland_launcher.relay``.
"""

from __future__ import annotations

from cloudland_launcher.rank import ChildRank
from cloudland_launcher.subtree import Subtree
from cloudland_proto.v1 import envelope_pb2 as pb


class Relay(ChildRank):
    relay = True

    def setup(self) -> None:
        self.subtree = Subtree(
            self.mpi, self.assign, self.node, self.buffer.add, self.send_event, self.backoff.doorbell
        )
        self.subtree.start()

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
        active = self.subtree.poll()
        self.subtree.check()
        return active

    def pending(self, job_id: str) -> int:
        return self.subtree.pending(job_id)

    def ready(self) -> bool:
        return self.subtree.all_up()

    def inventory(self) -> list[pb.HypervisorReport]:
        self.subtree.changed.clear()
        return list(self.subtree.reports.values())

    def changed_reports(self) -> list[pb.HypervisorReport]:
        changed = list(self.subtree.changed.values())
        self.subtree.changed.clear()
        return changed

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
