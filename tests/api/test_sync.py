"""The reconciler's hypervisor states against a real database (SQLite and PostgreSQL), fed by a
stand-in for the root's client that answers real protobuf messages: which hypervisors are up,
down, gone or removed, and what that leaves of their VMs. The real tree is in tests/integration.
"""

from __future__ import annotations

import logging
import uuid as uuidlib
from datetime import timedelta

import pytest
from sqlalchemy import update

from cloudland_api import sync
from cloudland_api.models import Hypervisor, Instance, utcnow
from cloudland_proto.v1 import envelope_pb2 as pb
from cloudland_proto.v1 import root_pb2
from tests.api.conftest import Api, Launcher, settle

HYPERVISORS = "/api/v1/hypervisors"


class FakeRoot:
    """What ``RootClient`` answers the reconciler: one Topology per call from ``builds`` (the last
    one repeats), and a Health of ``hypervisors`` with one leaf rank each, ``lost`` leaves not OK."""

    def __init__(self) -> None:
        self.hypervisors: list[int] = []
        self.lost: set[int] = set()
        self.vms: dict[int, list[pb.VmState]] = {}
        self.builds: list[tuple[bool, float]] = [(True, 1.0)]  # (ready, build_seconds) per topology call
        self.free_mib = 16000

    def boot(self, count: int, build_seconds: float) -> None:
        """A tree (re)started with ``count`` hypervisors, ready."""
        self.hypervisors, self.builds = list(range(count)), [(True, build_seconds)]

    def topology(self) -> root_pb2.TopologyReply:
        ready, build = self.builds.pop(0) if len(self.builds) > 1 else self.builds[0]
        count = len(self.hypervisors)
        return root_pb2.TopologyReply(hypervisors=count, per_leaf=1, leaves=count, ready=ready, build_seconds=build)

    def health(self, reports: bool = False) -> root_pb2.HealthReply:
        assert reports
        reply = root_pb2.HealthReply()
        for hv in self.hypervisors:
            state = pb.PEER_LOST if hv in self.lost else pb.PEER_OK
            reply.peers.add(node=pb.NodeId(first_leaf=hv, end_leaf=hv + 1), relay=False, state=state)
            reply.reports.add(hypervisor=hv, hostname=f"sim-{hv}", cpus=8, memory_kib=16384 * 1024,
                              free_memory_kib=self.free_mib * 1024, vms=self.vms.get(hv, []))
        return reply

    def close(self) -> None:
        pass


@pytest.fixture
def root() -> FakeRoot:
    return FakeRoot()


@pytest.fixture
def reconciler(api: Api, root: FakeRoot) -> sync.Reconciler:
    return sync.Reconciler(api.app.state.write_sessions, "", client=root)  # type: ignore[arg-type]


def states(api: Api, headers: dict[str, str]) -> dict[int, str]:
    listing = api.client.get(HYPERVISORS, params={"include_removed": "true"}, headers=headers).json()["items"]
    return {h["id"]: h["state"] for h in listing}


def settled_vm(api: Api, launch: Launcher, name: str, hypervisor: int, root: FakeRoot) -> dict:
    """A running instance on ``hypervisor`` whose domain the fake tree reports, touched long
    enough ago (sync.SETTLE_S) for the reconciler to judge it."""
    accepted = launch(name)
    [instance], [job] = accepted["instances"], accepted["jobs"]
    with api.app.state.write_sessions() as session:
        session.execute(update(Instance).where(Instance.id == instance["id"]).values(hypervisor_id=hypervisor))
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
        api: Api, admin_headers: dict[str, str], launch: Launcher, root: FakeRoot, reconciler: sync.Reconciler,
        caplog: pytest.LogCaptureFixture) -> None:
    root.boot(4, 1.0)
    reconciler.sync_once()
    assert states(api, admin_headers) == {0: "up", 1: "up", 2: "up", 3: "up"}
    kept = settled_vm(api, launch, "kept", 3, root)
    vanished = settled_vm(api, launch, "vanished", 1, root)
    root.vms[1] = []  # its domain is gone from a host the tree still has: that one is an error
    reconciler.sync_once()
    claims = api.client.get(f"{HYPERVISORS}/3", headers=admin_headers).json()["vcpus_claimed"]
    assert claims == 1

    root.boot(2, 2.0)  # restarted with fewer
    with caplog.at_level(logging.WARNING, logger="cloudland_api.sync"):
        reconciler.sync_once()
        reconciler.sync_once()  # and again: nothing more changes, nothing more is logged
    assert states(api, admin_headers) == {0: "up", 1: "up", 2: "gone", 3: "gone"}
    gone_lines = [r.getMessage() for r in caplog.records if "hypervisor_gone" in r.getMessage()]
    assert gone_lines == ["event=hypervisor_gone hypervisor=2 was=up", "event=hypervisor_gone hypervisor=3 was=up"]
    # The VM on the gone host keeps its status and its claim: it is still in the database.
    shown = api.client.get(f"/api/v1/instances/{kept['id']}", headers=admin_headers).json()
    assert (shown["status"], shown["status_reason"]) == ("running", None)
    assert api.client.get(f"{HYPERVISORS}/3", headers=admin_headers).json()["vcpus_claimed"] == 1
    shown = api.client.get(f"/api/v1/instances/{vanished['id']}", headers=admin_headers).json()
    assert shown["status"] == "error" and "missing on hypervisor 1" in shown["status_reason"]

    root.boot(4, 3.0)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cloudland_api.sync"):
        reconciler.sync_once()
    assert states(api, admin_headers) == {0: "up", 1: "up", 2: "up", 3: "up"}
    assert "event=hypervisor_up hypervisor=3 was=gone" in caplog.text


@pytest.mark.parametrize("builds", [[(False, 0.0)], [(True, 2.0), (False, 2.0)], [(True, 2.0), (True, 2.5)]],
                         ids=["not ready", "not ready after", "rebuilt between the reads"])
def test_only_a_complete_reply_from_one_ready_build_makes_hypervisors_gone(
        api: Api, admin_headers: dict[str, str], root: FakeRoot, reconciler: sync.Reconciler,
        builds: list[tuple[bool, float]]) -> None:
    root.boot(4, 1.0)
    reconciler.sync_once()
    root.boot(2, 2.0)
    root.builds = list(builds)  # a root still building, or one restarted between Topology and Health
    reconciler.sync_once()
    assert states(api, admin_headers) == {0: "up", 1: "up", 2: "up", 3: "up"}
    root.builds = [(True, 2.0)]
    reconciler.sync_once()
    assert states(api, admin_headers) == {0: "up", 1: "up", 2: "gone", 3: "gone"}


def test_a_lost_leaf_is_down_not_gone(api: Api, admin_headers: dict[str, str], root: FakeRoot,
                                      reconciler: sync.Reconciler) -> None:
    root.boot(3, 1.0)
    reconciler.sync_once()
    root.lost = {1}  # the root keeps the last report of a lost leaf's hypervisor
    reconciler.sync_once()
    assert states(api, admin_headers) == {0: "up", 1: "down", 2: "up"}
    root.lost = set()
    reconciler.sync_once()
    assert states(api, admin_headers) == {0: "up", 1: "up", 2: "up"}


def test_a_removed_hypervisor_stays_removed_whatever_it_reports(api: Api, admin_headers: dict[str, str],
                                                                root: FakeRoot, reconciler: sync.Reconciler) -> None:
    root.boot(3, 1.0)
    reconciler.sync_once()
    assert api.client.delete(f"{HYPERVISORS}/2", headers=admin_headers).json()["state"] == "removed"
    root.free_mib = 9000  # the report changes: it would be written for any other host
    reconciler.sync_once()
    removed = api.client.get(f"{HYPERVISORS}/2", headers=admin_headers).json()
    assert (removed["state"], removed["free_memory_mib"]) == ("removed", 16000)
    assert api.client.get(f"{HYPERVISORS}/1", headers=admin_headers).json()["free_memory_mib"] == 9000
    root.boot(2, 2.0)  # and gone from the tree: still removed, not gone
    reconciler.sync_once()
    assert states(api, admin_headers) == {0: "up", 1: "up", 2: "removed"}


def test_instances_of_a_removed_hypervisors_reports_are_not_observed(api: Api, admin_headers: dict[str, str],
                                                                     launch: Launcher, root: FakeRoot,
                                                                     reconciler: sync.Reconciler) -> None:
    """A report ignored is ignored whole: what it says of domains changes no instance either."""
    root.boot(2, 1.0)
    reconciler.sync_once()
    vm = settled_vm(api, launch, "orphan", 1, root)
    with api.app.state.write_sessions() as session:  # as if removed from under it (not through the API)
        session.execute(update(Hypervisor).where(Hypervisor.id == 1).values(state="removed"))
        session.commit()
    root.vms[1] = [pb.VmState(name=f"cl-{vm['uuid']}", uuid=vm["uuid"], state="shutoff"),
                   pb.VmState(name="cl-x", uuid=str(uuidlib.uuid4()), state="running")]
    reconciler.sync_once()
    assert api.client.get(f"/api/v1/instances/{vm['id']}", headers=admin_headers).json()["status"] == "running"
