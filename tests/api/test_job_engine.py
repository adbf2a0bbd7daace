"""The job engine against a recording fake root (tests/fakeroot.py), on a real database.

Each test seeds jobs, runs one pass (``Engine.run_once``: plan, send, settle on this thread)
and compares the commands the fake recorded, then the jobs' and subjects' states.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any, ClassVar

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cloudland.errors import RootUnreachable
from cloudland_api import jobs
from cloudland_api.jobs import ALL, Engine, Kind, Outcome, Plan
from cloudland_api.models import Hypervisor, Instance, Job, JobState
from cloudland_proto.v1 import compute_pb2 as cpb
from cloudland_proto.v1 import diag_pb2 as diag
from cloudland_proto.v1 import image_pb2 as ipb
from tests.fakeroot import FakeRoot, Sent

Sessions = sessionmaker[Session]


class Probe(Kind):
    """A kind of this test alone: ``probe`` on subject ("probe", n), sent where ``job.args`` says."""

    name = "probe"
    subject = "probe"
    settled: ClassVar[list[tuple[str, str, dict[int, str]]]] = []

    def plan(self, plan: Plan, batch: list[Job]) -> None:
        for job in batch:
            where = job.args.get("targets")
            plan.send(job, "test.count", ALL if where is None else where, diag.TestCountRequest(key=job.id))

    def settle(self, session: Session, done: list[tuple[Job, Outcome]]) -> None:
        for job, outcome in done:
            self.settled.append((job.id, outcome.kind, {hv: r.status for hv, r in outcome.results.items()}))


@pytest.fixture
def fake() -> FakeRoot:
    return FakeRoot(hypervisors=[1, 2, 3])


@pytest.fixture
def engine(sessions: Sessions, fake: FakeRoot) -> Engine:
    Probe.settled.clear()
    # Retries are due at once: one pass later, not a quarter second later.
    return Engine(sessions, fake, kinds={**jobs.KINDS, "probe": Probe()}, backoff=lambda tries: 0.0)


def add_job(sessions: Sessions, org: int, kind: str, action: str, subject: tuple[str, int],
            **args: Any) -> str:
    with sessions() as session:
        job = Job(id=uuid.uuid4().hex, org_id=org, batch=uuid.uuid4().hex, kind=kind, action=action,
                  subject_type=subject[0], subject_id=subject[1], args=args, state=JobState.pending)
        session.add(job)
        if subject[0] == "instance":
            instance = session.get(Instance, subject[1])
            assert instance is not None
            instance.job_id = instance.job_id or job.id
        session.commit()
        return job.id


def add_vm(sessions: Sessions, org: int, hypervisor: int, status: str = "stopped") -> int:
    with sessions() as session:
        if session.get(Hypervisor, hypervisor) is None:
            session.add(Hypervisor(id=hypervisor, hostname=f"hv{hypervisor}", cpus=8, memory_mib=8192,
                                   free_memory_mib=8192))
        instance = Instance(org_id=org, name=f"vm-{uuid.uuid4().hex[:6]}", uuid=str(uuid.uuid4()), vcpus=1,
                            memory_mib=512, disk_gib=1, hypervisor_id=hypervisor, status=status)
        session.add(instance)
        session.commit()
        return instance.id


def job(sessions: Sessions, job_id: str) -> Job:
    with sessions() as session:
        row = session.get(Job, job_id)
        assert row is not None
        return row


def instance(sessions: Sessions, instance_id: int) -> Instance:
    with sessions() as session:
        row = session.get(Instance, instance_id)
        assert row is not None
        return row


# -- unicast: VM jobs ---------------------------------------------------------------------------


def test_a_vm_job_is_sent_once_to_its_hypervisor_and_settles_the_instance(
        sessions: Sessions, org: int, fake: FakeRoot, engine: Engine) -> None:
    vm = add_vm(sessions, org, 2)
    start = add_job(sessions, org, "vm", "start", ("instance", vm))
    engine.run_once()
    assert fake.commands == [Sent(start, "vm.start", 2, None)]
    assert fake.commands[0].request == cpb.VmStartRequest(name=f"cl-{instance(sessions, vm).uuid}")
    done = job(sessions, start)
    assert (done.state, done.attempts, done.targets, done.hypervisor_id) == (
        JobState.succeeded, 1, {"hypervisor": 2}, 2)
    assert (instance(sessions, vm).status, instance(sessions, vm).job_id) == ("running", None)
    assert engine.run_once() == []  # nothing left to do


def test_an_unavailable_hypervisor_is_asked_again_under_the_same_job_id(
        sessions: Sessions, org: int, fake: FakeRoot, engine: Engine) -> None:
    vm = add_vm(sessions, org, 1, "running")
    stop = add_job(sessions, org, "vm", "stop", ("instance", vm))
    fake.fail_next("vm.stop", "unavailable", "subtree lost")
    engine.run_once()
    assert (job(sessions, stop).state, instance(sessions, vm).status) == (JobState.dispatched, "running")
    engine.run_once()
    assert fake.commands == [Sent(stop, "vm.stop", 1, None), Sent(stop, "vm.stop", 1, None)]
    assert (job(sessions, stop).state, job(sessions, stop).attempts) == (JobState.succeeded, 2)
    assert instance(sessions, vm).status == "stopped"


def test_a_root_that_cannot_be_reached_is_asked_again(sessions: Sessions, org: int, fake: FakeRoot,
                                                       engine: Engine) -> None:
    vm = add_vm(sessions, org, 3)
    start = add_job(sessions, org, "vm", "start", ("instance", vm))
    fake.raise_next("vm.start", RootUnreachable("root at 127.0.0.1:1 does not answer: connection refused"))
    engine.run_once()
    engine.run_once()
    assert [c.job_id for c in fake.commands] == [start, start]
    assert job(sessions, start).state == JobState.succeeded


def test_a_job_gives_up_when_its_retry_budget_is_spent(sessions: Sessions, org: int, fake: FakeRoot,
                                                        engine: Engine) -> None:
    vm = add_vm(sessions, org, 1)
    start = add_job(sessions, org, "vm", "start", ("instance", vm))
    fake.unavailable(1)
    engine.retry_budget_s = 0.0
    engine.run_once()  # the first retry is within the budget: it starts the clock
    engine.run_once()
    done = job(sessions, start)
    assert done.state == JobState.failed
    assert done.reason is not None and done.reason.startswith("hypervisor 1 unavailable: subtree of hypervisor 1 lost")
    assert "gave up after 2 tries" in done.reason
    assert instance(sessions, vm).status_reason == f"start failed: {done.reason}"


def test_a_failed_vm_job_says_where(sessions: Sessions, org: int, fake: FakeRoot, engine: Engine) -> None:
    vm = add_vm(sessions, org, 2)
    delete = add_job(sessions, org, "vm", "delete", ("instance", vm))
    fake.fail_next("vm.delete", "failed", "domain is locked")
    engine.run_once()
    done = job(sessions, delete)
    assert (done.state, done.reason) == (JobState.failed, "hypervisor 2: domain is locked")
    assert (instance(sessions, vm).status, instance(sessions, vm).status_reason) == (
        "error", "delete failed: hypervisor 2: domain is locked")


# -- one job at a time per subject -------------------------------------------------------------


def test_a_second_job_on_the_same_subject_waits_for_the_first(sessions: Sessions, org: int, fake: FakeRoot,
                                                               engine: Engine) -> None:
    vm = add_vm(sessions, org, 1)
    start = add_job(sessions, org, "vm", "start", ("instance", vm))
    stop = add_job(sessions, org, "vm", "stop", ("instance", vm))
    other = add_job(sessions, org, "probe", "count", ("probe", vm), targets=[2])  # same id, other type
    fake.fail_next("vm.start", "unavailable")
    engine.run_once()
    # The start is retried; the stop waits behind it; a job on another subject is not held up.
    assert fake.commands == [Sent(start, "vm.start", 1, None), Sent(other, "test.count", (2,), None)]
    assert job(sessions, stop).state == JobState.pending
    engine.run_once()
    assert fake.commands[2:] == [Sent(start, "vm.start", 1, None)]
    assert job(sessions, start).state == JobState.succeeded
    engine.run_once()  # the start has ended: now the stop
    assert fake.commands[3:] == [Sent(stop, "vm.stop", 1, None)]
    assert (job(sessions, stop).state, instance(sessions, vm).status) == (JobState.succeeded, "stopped")


# -- multicast and broadcast: a kind of this test's own -----------------------------------------


def test_a_multicast_settles_when_every_target_answered_and_fails_naming_the_failed_one(
        sessions: Sessions, org: int, fake: FakeRoot, engine: Engine) -> None:
    probe = add_job(sessions, org, "probe", "count", ("probe", 1), targets=[1, 2, 3])
    fake.fail_next("test.count", "failed", "disk full", hypervisors=[2])
    engine.run_once()
    assert fake.commands == [Sent(probe, "test.count", (1, 2, 3), None)]
    done = job(sessions, probe)
    assert (done.state, done.reason, done.targets) == (
        JobState.failed, "failed on 1 of 3 hypervisors: hypervisor 2: disk full", {"hypervisors": [1, 2, 3]})
    assert Probe.settled == [(probe, "failed", {1: "ok", 2: "failed", 3: "ok"})]


def test_a_multicast_asks_again_only_the_targets_that_were_unavailable(
        sessions: Sessions, org: int, fake: FakeRoot, engine: Engine) -> None:
    probe = add_job(sessions, org, "probe", "count", ("probe", 2), targets=[1, 2, 3])
    fake.unavailable(3)
    engine.run_once()
    assert job(sessions, probe).state == JobState.dispatched
    fake.restore(3)
    engine.run_once()
    assert fake.commands == [Sent(probe, "test.count", (1, 2, 3), None), Sent(probe, "test.count", (3,), None)]
    assert job(sessions, probe).state == JobState.succeeded
    assert Probe.settled == [(probe, "ok", {1: "ok", 2: "ok", 3: "ok"})]


def test_a_broadcast_goes_to_all_and_settles_on_every_answer(sessions: Sessions, org: int, fake: FakeRoot,
                                                              engine: Engine) -> None:
    probe = add_job(sessions, org, "probe", "count", ("probe", 3))
    engine.run_once()
    assert fake.commands == [Sent(probe, "test.count", None, None)]
    assert (job(sessions, probe).state, job(sessions, probe).targets) == (JobState.succeeded, {"all": True})
    assert Probe.settled == [(probe, "ok", {1: "ok", 2: "ok", 3: "ok"})]


def test_an_image_eviction_is_best_effort_and_counts_what_became_of_the_copies(
        sessions: Sessions, org: int, fake: FakeRoot, engine: Engine) -> None:
    evict = add_job(sessions, org, "image", "evict", ("image", 9), sha256="ab" * 32)
    fake.results["image.evict"] = ipb.ImageEvictResult(in_use=True)
    fake.unavailable(3)
    engine.run_once()
    assert fake.commands == [Sent(evict, "image.evict", None, None)]  # not asked again
    assert fake.commands[0].request == ipb.ImageEvictRequest(sha256="ab" * 32)
    done = job(sessions, evict)
    assert done.state == JobState.failed
    assert done.reason == ("evicted on 0, kept in use on 2, failed on 1: failed on 1 of 3 hypervisors: "
                           "hypervisor 3 unavailable: subtree of hypervisor 3 lost")


def test_a_job_of_an_unknown_kind_fails_saying_so(sessions: Sessions, org: int, fake: FakeRoot,
                                                   engine: Engine) -> None:
    odd = add_job(sessions, org, "network", "create", ("network", 1))
    engine.run_once()
    assert fake.commands == []
    assert (job(sessions, odd).state, job(sessions, odd).reason) == (
        JobState.failed, "unknown job kind 'network': no handler is registered")


def test_unfinished_jobs_are_planned_again_by_a_new_engine(sessions: Sessions, org: int, fake: FakeRoot,
                                                           engine: Engine) -> None:
    """As after an API restart: a job left dispatched is sent again under its id."""
    vm = add_vm(sessions, org, 2)
    start = add_job(sessions, org, "vm", "start", ("instance", vm))
    with sessions() as session:
        session.get(Job, start).state = JobState.dispatched  # type: ignore[union-attr]
        session.commit()
    again = Engine(sessions, fake, kinds={**jobs.KINDS, "probe": Probe()})
    assert again.unfinished() == [start]
    again.run_once()
    assert fake.commands == [Sent(start, "vm.start", 2, None)]
    assert [j.state for j in map(lambda i: job(sessions, i), [start])] == [JobState.succeeded]
    with sessions() as session:
        assert session.scalars(select(Job.id).where(Job.state == JobState.pending)).all() == []


# -- micro-batching ------------------------------------------------------------------------------


@pytest.mark.parametrize("linger_s, taken", [(0.0, ["a"]), (2.0, ["a", "b"])])
def test_jobs_that_arrive_within_the_linger_share_one_planning_pass(
        sessions: Sessions, fake: FakeRoot, linger_s: float, taken: list[str]) -> None:
    # Issue 15: concurrent single creates are planned together (one read of the hosts, one claim
    # per host, one commit), not one pass each. The second job comes 0.1 s after the first.
    engine = Engine(sessions, fake, linger_s=linger_s)
    engine.submit(["a"])
    later = threading.Timer(0.1, engine.submit, [["b"]])
    later.start()
    try:
        assert engine._take(1.0) == taken
    finally:
        later.join()
