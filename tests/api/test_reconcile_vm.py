"""The VM reconciler against a recording fake root: seed instances and what hypervisors report,
run one pass (sync, then the engine's pass), compare the commands sent."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from cloudland_api.jobs import Engine
from cloudland_api.models import Hypervisor, Instance, Job, JobState, utcnow
from cloudland_api.reconcile.vm import Domain, sync_hypervisors
from tests.fakeroot import FakeRoot, Sent

Sessions = sessionmaker[Session]


@pytest.fixture(autouse=True)
def hypervisors(sessions: Sessions) -> None:
    with sessions() as session:
        for hv in (1, 2):
            session.add(Hypervisor(id=hv, hostname=f"hv{hv}", cpus=8, memory_mib=8192, free_memory_mib=8192))
        session.commit()


def vm(sessions: Sessions, org: int, hv: int, status: str, age_s: float = 60.0, **fields: object) -> Instance:
    with sessions() as session:
        instance = Instance(org_id=org, name=f"vm-{uuid.uuid4().hex[:6]}", uuid=str(uuid.uuid4()), vcpus=1,
                            memory_mib=256, disk_gib=1, hypervisor_id=hv, status=status, **fields)
        session.add(instance)
        session.flush()
        instance.updated_at = utcnow() - timedelta(seconds=age_s)
        session.commit()
        session.expunge(instance)
        return instance


def domain(instance: Instance, state: str = "running", managed: bool = True) -> tuple[str, Domain]:
    return instance.uuid, Domain(instance.domain_name, instance.uuid, state, instance.id if managed else 0)


def one_pass(sessions: Sessions, observed: dict[int, dict[str, Domain]], fake: FakeRoot) -> tuple[list[Sent], set[int]]:
    with sessions() as session:
        verdict = sync_hypervisors(session, observed)
        session.commit()
        ids = [job.id for job in verdict.jobs]
    engine = Engine(sessions, fake)
    engine.run_once(ids)
    engine.run_once()  # what waited behind them (a stop behind its recover)
    return fake.commands, verdict.again


def test_a_running_vm_whose_domain_vanished_is_created_again_where_it_was(sessions: Sessions, org: int) -> None:
    fake = FakeRoot([1, 2])
    gone, there = vm(sessions, org, 1, "running"), vm(sessions, org, 1, "running")
    commands, again = one_pass(sessions, {1: dict([domain(there)])}, fake)
    assert [(c.operation, c.targets) for c in commands] == [("vm.create", 1)]
    assert commands[0].request.spec.uuid == gone.uuid and commands[0].request.spec.name == gone.domain_name
    assert again == set()
    with sessions() as session:
        row = session.get(Instance, gone.id)
        assert row is not None and (row.status, row.job_id, row.hypervisor_id) == ("running", None, 1)
        job = session.get(Job, commands[0].job_id)
        assert job is not None and (job.action, job.user_id, job.state) == ("recover", None, JobState.succeeded)
        assert job.batch.startswith("reconcile-")


def test_a_stopped_vm_whose_domain_vanished_is_defined_again_and_stays_stopped(sessions: Sessions,
                                                                              org: int) -> None:
    fake = FakeRoot([1, 2])
    stopped = vm(sessions, org, 2, "stopped")
    commands, _ = one_pass(sessions, {2: {}}, fake)
    assert [(c.operation, c.targets) for c in commands] == [("vm.create", 2), ("vm.stop", 2)]
    with sessions() as session:
        row = session.get(Instance, stopped.id)
        assert row is not None and (row.status, row.job_id) == ("stopped", None)


def test_busy_or_fresh_instances_are_looked_at_again_later_not_now(sessions: Sessions, org: int) -> None:
    fake = FakeRoot([1, 2])
    vm(sessions, org, 1, "running", job_id="someotherjob")
    vm(sessions, org, 1, "running", age_s=1.0)
    vm(sessions, org, 2, "building", age_s=60.0)  # its create is what will make the domain
    commands, again = one_pass(sessions, {1: {}, 2: {}}, fake)
    assert commands == []
    assert again == {1}


def test_a_leftover_domain_with_our_metadata_is_removed_and_a_foreign_one_left_alone(sessions: Sessions,
                                                                                     org: int) -> None:
    fake = FakeRoot([1, 2])
    moved = vm(sessions, org, 2, "running")          # lives on 2; a copy was left on 1
    deleted = vm(sessions, org, 1, "deleted")
    foreign = Domain("cl-00000000-0000-0000-0000-000000000000", "00000000-0000-0000-0000-000000000000",
                     "running", 0)
    observed = {1: dict([domain(moved), domain(deleted), (foreign.uuid, foreign)]), 2: dict([domain(moved)])}
    with sessions() as session:
        verdict = sync_hypervisors(session, observed)
        session.commit()
    assert verdict.unmanaged == [(1, foreign.name)]
    engine = Engine(sessions, fake)
    engine.run_once([j.id for j in verdict.jobs])
    assert sorted((c.operation, c.targets, c.request.name) for c in fake.commands) == sorted([
        ("vm.delete", 1, moved.domain_name), ("vm.delete", 1, deleted.domain_name)])
    with sessions() as session:
        row = session.get(Instance, moved.id)
        assert row is not None and (row.status, row.hypervisor_id) == ("running", 2)
        # A second pass while the same leftover is still reported makes no second purge.
        again = sync_hypervisors(session, {1: dict([domain(moved)])})
        assert [j.action for j in again.jobs] == ["purge"]  # the first one ended: a new pass may try again


def test_a_recover_that_fails_says_why_and_is_retried_by_the_engine(sessions: Sessions, org: int) -> None:
    fake = FakeRoot([1, 2])
    gone = vm(sessions, org, 1, "running")
    fake.fail_next("vm.create", "unavailable", "subtree lost")
    with sessions() as session:
        verdict = sync_hypervisors(session, {1: {}})
        session.commit()
    engine = Engine(sessions, fake, backoff=lambda tries: 0.0)
    engine.run_once([j.id for j in verdict.jobs])
    engine.run_once()
    assert [(c.operation, c.job_id) for c in fake.commands] == [("vm.create", verdict.jobs[0].id)] * 2
    with sessions() as session:
        row = session.get(Instance, gone.id)
        assert row is not None and (row.status, row.status_reason) == ("running", None)
