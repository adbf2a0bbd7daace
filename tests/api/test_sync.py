"""The observer's hypervisor states against a real database (SQLite and PostgreSQL), fed real
protobuf Watch events by hand or by a stand-in for the root's client: which hypervisors are up,
down, gone or removed, and what that leaves of their VMs; that only changes are written, and that
a broken stream is taken up again with what was held. The real tree is in tests/integration.
"""

from __future__ import annotations

import logging
import time
import uuid as uuidlib
from datetime import timedelta

import pytest
from sqlalchemy import update

from cloudland.errors import RootUnreachable
from cloudland_api.reconcile import observer as sync
from cloudland_api.models import Hypervisor, Instance, utcnow
from cloudland_api.services import scheduler
from cloudland_proto.v1 import envelope_pb2 as pb
from cloudland_proto.v1 import root_pb2
from tests.api.conftest import Api, Launcher, settle

HYPERVISORS = "/api/v1/hypervisors"


class FakeRoot:
    """What the root's Watch stream would say: ``hypervisors`` with one leaf rank each, ``lost``
    leaves down, each one's ``vms``; ``event()`` is a snapshot of that, ``ready`` as Topology says."""

    def __init__(self) -> None:
        self.hypervisors: list[int] = []
        self.lost: set[int] = set()
        self.vms: dict[int, list[pb.VmState]] = {}
        self.ready, self.build_seconds = True, 1.0
        self.free_mib = 16000

    def boot(self, count: int, build_seconds: float) -> None:
        """A tree (re)started with ``count`` hypervisors, ready."""
        self.hypervisors, self.ready, self.build_seconds = list(range(count)), True, build_seconds

    def event(self) -> root_pb2.WatchEvent:
        snapshot = root_pb2.WatchEvent(snapshot=True, reported=self.hypervisors, down=sorted(self.lost),
                                       ready=self.ready, build_seconds=self.build_seconds)
        for hv in self.hypervisors:
            snapshot.reports.add(hypervisor=hv, hostname=f"sim-{hv}", cpus=8, memory_kib=16384 * 1024,
                                 free_memory_kib=self.free_mib * 1024, vms=self.vms.get(hv, []))
        return snapshot


class Stream:
    """The observer fed by hand: ``sync()`` applies the fake root's snapshot and writes it."""

    def __init__(self, observer: sync.Observer, root: FakeRoot) -> None:
        self.observer, self.root = observer, root

    def sync(self) -> set[int]:
        self.observer.apply(self.root.event())
        return self.observer.flush()


@pytest.fixture
def root() -> FakeRoot:
    return FakeRoot()


@pytest.fixture
def reconciler(api: Api, root: FakeRoot) -> Stream:
    return Stream(sync.Observer(api.app.state.write_sessions, ""), root)


def states(api: Api, headers: dict[str, str]) -> dict[int, str]:
    listing = api.client.get(HYPERVISORS, params={"include_removed": "true"}, headers=headers).json()["items"]
    return {h["id"]: h["state"] for h in listing}


def settled_vm(api: Api, launch: Launcher, name: str, hypervisor: int, root: FakeRoot) -> dict:
    """A running instance on ``hypervisor`` whose domain the fake tree reports, touched long
    enough ago (sync.SETTLE_S) for the reconciler to judge it."""
    accepted = launch(name)
    [instance], [job] = accepted["instances"], accepted["jobs"]
    with api.app.state.write_sessions() as session:  # placed and claimed, as the engine's planner does
        session.execute(update(Instance).where(Instance.id == instance["id"]).values(hypervisor_id=hypervisor))
        assert scheduler.claim(session, hypervisor, instance["vcpus"], instance["memory_mib"])
        session.commit()
    settle(api, job["id"])
    with api.app.state.write_sessions() as session:
        old = utcnow() - timedelta(seconds=sync.SETTLE_S * 2)
        session.execute(update(Instance).where(Instance.id == instance["id"]).values(updated_at=old))
        session.commit()
    root.vms.setdefault(hypervisor, []).append(pb.VmState(name=f"cl-{instance['uuid']}", uuid=instance["uuid"],
                                                          state="running"))
    return instance


def test_hypervisors_a_ready_tree_no_longer_has_are_gone_until_they_report_again(
        api: Api, admin_headers: dict[str, str], launch: Launcher, root: FakeRoot, reconciler: Stream,
        caplog: pytest.LogCaptureFixture) -> None:
    root.boot(4, 1.0)
    reconciler.sync()
    assert states(api, admin_headers) == {0: "up", 1: "up", 2: "up", 3: "up"}
    kept = settled_vm(api, launch, "kept", 3, root)
    vanished = settled_vm(api, launch, "vanished", 1, root)
    root.vms[1] = []  # its domain is gone from a host the tree still has: the converger's to recover
    reconciler.sync()
    claims = api.client.get(f"{HYPERVISORS}/3", headers=admin_headers).json()["vcpus_claimed"]
    assert claims == 1

    root.boot(2, 2.0)  # restarted with fewer
    with caplog.at_level(logging.WARNING, logger="cloudland_api.reconcile.observer"):
        reconciler.sync()
        reconciler.sync()  # and again: nothing more changes, nothing more is logged
    assert states(api, admin_headers) == {0: "up", 1: "up", 2: "gone", 3: "gone"}
    gone_lines = [r.getMessage() for r in caplog.records if "hypervisor_gone" in r.getMessage()]
    assert gone_lines == ["event=hypervisor_gone hypervisor=2 was=up", "event=hypervisor_gone hypervisor=3 was=up"]
    # The VM on the gone host keeps its status and its claim: it is still in the database.
    shown = api.client.get(f"/api/v1/instances/{kept['id']}", headers=admin_headers).json()
    assert (shown["status"], shown["status_reason"]) == ("running", None)
    assert api.client.get(f"{HYPERVISORS}/3", headers=admin_headers).json()["vcpus_claimed"] == 1
    shown = api.client.get(f"/api/v1/instances/{vanished['id']}", headers=admin_headers).json()
    assert (shown["status"], shown["status_reason"]) == ("running", None)  # not an error: it is recovered

    root.boot(4, 3.0)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cloudland_api.reconcile.observer"):
        reconciler.sync()
    assert states(api, admin_headers) == {0: "up", 1: "up", 2: "up", 3: "up"}
    assert "event=hypervisor_up hypervisor=3 was=gone" in caplog.text


def test_only_a_snapshot_of_a_ready_tree_makes_hypervisors_gone(
        api: Api, admin_headers: dict[str, str], root: FakeRoot, reconciler: Stream) -> None:
    """Until the tree is ready, a hypervisor without a report may only not have said hello yet."""
    root.boot(4, 1.0)
    reconciler.sync()
    root.boot(2, 2.0)
    root.ready = False  # a root still building
    reconciler.sync()
    assert states(api, admin_headers) == {0: "up", 1: "up", 2: "up", 3: "up"}
    root.ready = True
    reconciler.sync()
    assert states(api, admin_headers) == {0: "up", 1: "up", 2: "gone", 3: "gone"}


def test_a_lost_leaf_is_down_not_gone(api: Api, admin_headers: dict[str, str], root: FakeRoot,
                                      reconciler: Stream) -> None:
    root.boot(3, 1.0)
    reconciler.sync()
    root.lost = {1}  # the root keeps the last report of a lost leaf's hypervisor
    reconciler.sync()
    assert states(api, admin_headers) == {0: "up", 1: "down", 2: "up"}
    root.lost = set()
    reconciler.sync()
    assert states(api, admin_headers) == {0: "up", 1: "up", 2: "up"}


def test_a_removed_hypervisor_stays_removed_whatever_it_reports(api: Api, admin_headers: dict[str, str],
                                                                root: FakeRoot, reconciler: Stream) -> None:
    root.boot(3, 1.0)
    reconciler.sync()
    assert api.client.delete(f"{HYPERVISORS}/2", headers=admin_headers).json()["state"] == "removed"
    root.free_mib = 9000  # the report changes: it would be written for any other host
    reconciler.sync()
    removed = api.client.get(f"{HYPERVISORS}/2", headers=admin_headers).json()
    assert (removed["state"], removed["free_memory_mib"]) == ("removed", 16000)
    assert api.client.get(f"{HYPERVISORS}/1", headers=admin_headers).json()["free_memory_mib"] == 9000
    root.boot(2, 2.0)  # and gone from the tree: still removed, not gone
    reconciler.sync()
    assert states(api, admin_headers) == {0: "up", 1: "up", 2: "removed"}


def test_instances_of_a_removed_hypervisors_reports_are_not_observed(api: Api, admin_headers: dict[str, str],
                                                                     launch: Launcher, root: FakeRoot,
                                                                     reconciler: Stream) -> None:
    """A report ignored is ignored whole: what it says of domains changes no instance either."""
    root.boot(2, 1.0)
    reconciler.sync()
    vm = settled_vm(api, launch, "orphan", 1, root)
    with api.app.state.write_sessions() as session:  # as if removed from under it (not through the API)
        session.execute(update(Hypervisor).where(Hypervisor.id == 1).values(state="removed"))
        session.commit()
    root.vms[1] = [pb.VmState(name=f"cl-{vm['uuid']}", uuid=vm["uuid"], state="shutoff"),
                   pb.VmState(name="cl-x", uuid=str(uuidlib.uuid4()), state="running")]
    reconciler.sync()
    assert api.client.get(f"/api/v1/instances/{vm['id']}", headers=admin_headers).json()["status"] == "running"


def test_changes_write_only_their_hypervisors_and_name_them_to_the_converger(
        api: Api, admin_headers: dict[str, str], root: FakeRoot, reconciler: Stream) -> None:
    root.boot(3, 1.0)
    assert reconciler.sync() == {0, 1, 2}  # the first snapshot: every hypervisor is news
    observer = reconciler.observer
    assert observer.flush() == set()  # nothing new, nothing written
    change = root_pb2.WatchEvent(down=[2])
    change.reports.add(hypervisor=1, hostname="sim-1", cpus=8, memory_kib=16384 * 1024,
                       free_memory_kib=8000 * 1024, incarnation="x", generation=2)
    observer.apply(change)
    assert observer.flush() == {1}  # 2 went down: not the converger's while down
    assert states(api, admin_headers) == {0: "up", 1: "up", 2: "down"}
    assert api.client.get(f"{HYPERVISORS}/1", headers=admin_headers).json()["free_memory_mib"] == 8000
    assert observer.observed([0, 1, 2]).keys() == {0, 1}
    observer.apply(root_pb2.WatchEvent(up=[2]))
    assert observer.flush() == {2}
    assert states(api, admin_headers) == {0: "up", 1: "up", 2: "up"}


class BrokenStreams:
    """A root client whose Watch streams each yield ``events`` and then break."""

    def __init__(self, events: list[root_pb2.WatchEvent]) -> None:
        self.events, self.asked = events, []

    def watch(self, known: list[root_pb2.ReportVersion]) -> object:
        self.asked.append({k.hypervisor: (k.incarnation, k.generation) for k in known})
        yield from self.events
        raise RootUnreachable("the root went away")

    def close(self) -> None:
        pass


def test_a_broken_stream_is_taken_up_again_with_the_versions_held(api: Api, admin_headers: dict[str, str]) -> None:
    snapshot = root_pb2.WatchEvent(snapshot=True, reported=[0], ready=True)
    snapshot.reports.add(hypervisor=0, hostname="sim-0", cpus=8, memory_kib=1 << 24, incarnation="a", generation=4)
    client = BrokenStreams([snapshot])
    changed: list[set[int]] = []
    observer = sync.Observer(api.app.state.write_sessions, "", client=client,  # type: ignore[arg-type]
                             on_change=changed.append)
    observer.start()
    try:
        assert observer.ready.wait(10)
        deadline = time.monotonic() + 10
        while len(client.asked) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        observer.stop()
    assert client.asked[:2] == [{}, {0: ("a", 4)}]
    assert changed[0] == {0} and states(api, admin_headers) == {0: "up"}


def claims_of(api: Api, hypervisor: int) -> int:
    with api.app.state.write_sessions() as session:
        row = session.get(Hypervisor, hypervisor)
        assert row is not None
        return row.vcpus_claimed


def drift(api: Api, hypervisor: int, vcpus: int) -> None:
    """A lost release: the row claims ``vcpus`` that no instance holds."""
    with api.app.state.write_sessions() as session:
        session.execute(update(Hypervisor).where(Hypervisor.id == hypervisor).values(vcpus_claimed=vcpus))
        session.commit()


def test_claims_are_recounted_at_a_hosts_first_write_and_then_at_most_every_recount_s(
        api: Api, root: FakeRoot) -> None:
    # Placing and settling keep claims exact; the recount heals a lost release, once per host per
    # recount_s rather than after every report (issue 15), and the last change of a burst too.
    observer = sync.Observer(api.app.state.write_sessions, "", recount_s=0.5)
    root.boot(2, 1.0)
    observer.apply(root.event())
    observer.flush()
    drift(api, 1, 3)
    root.free_mib -= 100  # a report that changed
    observer.apply(root.event())
    assert observer.flush() == {0, 1}
    assert claims_of(api, 1) == 3, "recounted at the first write, not again within recount_s"
    time.sleep(0.6)
    assert observer.flush() == {0, 1}, "looked at again once recount_s has passed (the burst's last change)"
    assert claims_of(api, 1) == 0, "the drift healed"
    drift(api, 0, 2)
    restarted = sync.Observer(api.app.state.write_sessions, "", recount_s=60)
    restarted.apply(root.event())
    restarted.flush()
    assert claims_of(api, 0) == 0, "a new observer recounts every host it writes first"
