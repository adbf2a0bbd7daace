"""The scheduler's claims and weighers, and the VM jobs' claim bookkeeping, on a real database.

Claims are the one thing that must hold under concurrency: many threads (as many API
workers or dispatchers would) claim the same host at once and the host is never overbooked.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from cloudland_api import jobs
from cloudland_api.services import scheduler
from cloudland_api.models import Hypervisor, Instance, Job, JobState, Organisation

Sessions = sessionmaker[Session]


def add_host(sessions: Sessions, host_id: int, **fields: Any) -> None:
    """An idle host: all its memory free, nothing claimed, ratios 1.0 unless given."""
    spec = {"hostname": f"hv{host_id}", "cpus": 8, "memory_mib": 8192, "cpu_ratio": 1.0, "memory_ratio": 1.0} | fields
    spec.setdefault("free_memory_mib", spec["memory_mib"])
    with sessions() as session:
        session.add(Hypervisor(id=host_id, **spec))
        session.commit()


def claimed(sessions: Sessions, host_id: int) -> tuple[int, int]:
    with sessions() as session:
        host = session.get(Hypervisor, host_id)
        assert host is not None
        return host.vcpus_claimed, host.memory_claimed_mib


def claim(sessions: Sessions, host_id: int, vcpus: int, memory_mib: int) -> bool:
    with sessions() as session:
        won = scheduler.claim(session, host_id, vcpus, memory_mib)
        session.commit()
        return won


def in_threads(count: int, work: Callable[[], Any]) -> list[Any]:
    """``work()`` on ``count`` threads released together; the results (or the first error raised)."""
    start = threading.Barrier(count)
    results: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        start.wait()
        try:
            results.append(work())
        except BaseException as error:  # noqa: BLE001 - re-raised on the test's thread
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    if errors:
        raise errors[0]
    assert len(results) == count
    return results


def test_claim_until_the_room_is_gone(sessions: Sessions) -> None:
    add_host(sessions, 1, cpus=4, memory_mib=4096)
    assert claim(sessions, 1, 3, 1024)
    assert not claim(sessions, 1, 2, 1024)          # 5 vCPUs > 4
    assert claim(sessions, 1, 1, 3072)              # exactly full
    assert not claim(sessions, 1, 0, 1)             # no memory left
    assert claimed(sessions, 1) == (4, 4096)


def test_memory_the_agent_reports_in_use_counts_too(sessions: Sessions) -> None:
    # 3 GiB are held by a domain the database does not know: only 1 GiB is really free.
    add_host(sessions, 1, memory_mib=4096, free_memory_mib=1024)
    assert not claim(sessions, 1, 1, 2048)
    assert claim(sessions, 1, 1, 1024)
    # Used is the larger of claimed (1 GiB) and reported (3 GiB), not their sum: the report
    # normally includes the claimed domains already (module docstring of services/scheduler.py).
    with sessions() as session:
        placer = scheduler.Placer(session, "spread")
        assert placer.place(scheduler.Demand(1, 1025, "x86_64")) is None
        assert placer.place(scheduler.Demand(1, 1024, "x86_64")) == 1
        session.commit()
    assert claimed(sessions, 1) == (2, 2048) and not claim(sessions, 1, 0, 1025)


def test_concurrent_claims_never_overbook(sessions: Sessions) -> None:
    add_host(sessions, 1, cpus=25, memory_mib=1 << 20)
    results = in_threads(40, lambda: claim(sessions, 1, 1, 100))
    assert results.count(True) == 25
    assert claimed(sessions, 1) == (25, 2500)


def test_concurrent_placers_fill_every_host_and_no_more(sessions: Sessions) -> None:
    # Each placer reads the same free room, then loses claims to the others and moves on.
    for host_id in (1, 2, 3):
        add_host(sessions, host_id, cpus=4, memory_mib=1 << 20)

    def place() -> int | None:
        with sessions() as session:
            host = scheduler.Placer(session, "spread").place(scheduler.Demand(1, 64, "x86_64"))
            session.commit()
            return host

    hosts = in_threads(20, place)
    assert sorted(h for h in hosts if h is not None) == [1] * 4 + [2] * 4 + [3] * 4
    assert [claimed(sessions, h) for h in (1, 2, 3)] == [(4, 256)] * 3


def test_disabled_down_and_foreign_hosts_are_never_chosen(sessions: Sessions) -> None:
    add_host(sessions, 1, cpus=64, enabled=False)
    add_host(sessions, 2, cpus=64, state="down")
    add_host(sessions, 3, cpus=64, arch="aarch64")
    add_host(sessions, 4, cpus=2)
    demand = scheduler.Demand(1, 1024, "x86_64")
    with sessions() as session:
        placer = scheduler.Placer(session, "spread")
        assert [placer.place(demand) for _ in range(3)] == [4, 4, None]
        reason = placer.no_capacity(demand)
        session.commit()
    assert "no capacity" in reason and "1 vCPU and 1024 MiB for x86_64" in reason and "(1 considered)" in reason
    assert not claim(sessions, 1, 1, 1) and not claim(sessions, 2, 1, 1)  # the claim re-checks, too
    with sessions() as session:  # but a VM already on the disabled host may still grow
        assert scheduler.claim(session, 1, 1, 1, new_vm=False)
        session.commit()
    assert [claimed(sessions, h) for h in (1, 2, 3, 4)] == [(1, 1), (0, 0), (0, 0), (2, 2048)]
    with sessions() as session:
        placer = scheduler.Placer(session, "pack")
        assert placer.place(scheduler.Demand(1, 64, "i686")) is None
        assert placer.no_capacity(scheduler.Demand(1, 64, "i686")).startswith("no capacity")


@pytest.mark.parametrize(("weigher", "expected"), [("spread", [1, 1, 2, 1]), ("pack", [3, 3, 2, 2])])
def test_weighers(sessions: Sessions, weigher: str, expected: list[int]) -> None:
    # Free memory: host 1 8 GiB, host 2 6 GiB, host 3 3 GiB (some claimed, some in use outside us).
    add_host(sessions, 1, cpus=16)
    add_host(sessions, 2, cpus=16, vcpus_claimed=1, memory_claimed_mib=2048)
    add_host(sessions, 3, cpus=16, free_memory_mib=3072)
    with sessions() as session:
        placer = scheduler.Placer(session, weigher)
        placed = [placer.place(scheduler.Demand(1, 1536, "x86_64")) for _ in range(4)]
        session.commit()
    # spread: the most free memory each time: host 1 (8 GiB), host 1 (6.5), host 2 (6), host 1 (5).
    # pack: the least free that fits: host 3 until its 3 GiB are used, then host 2.
    assert placed == expected


# Hosts of four sizes (vCPUs, MiB); the last has memory to spare, so its vCPUs fill first.
SIZES = {1: (4, 4096), 2: (8, 8192), 3: (16, 16384), 4: (32, 65536)}


def used_fractions(sessions: Sessions) -> dict[int, float]:
    """Each host's fraction used: the larger of its vCPU and memory fractions."""
    return {host: max(claimed(sessions, host)[0] / vcpus, claimed(sessions, host)[1] / memory)
            for host, (vcpus, memory) in SIZES.items()}


@pytest.mark.parametrize("count", [7, 30, 51])
def test_spread_evens_out_the_fraction_used_on_hosts_of_every_size(sessions: Sessions, count: int) -> None:
    # Issue 16: by absolute free memory, host 4 took every VM until it was as empty as the others.
    for host, (vcpus, memory) in SIZES.items():
        add_host(sessions, host, cpus=vcpus, memory_mib=memory)
    demand = scheduler.Demand(1, 512, "x86_64")
    with sessions() as session:
        placed = scheduler.Placer(session, "spread").place_many([demand] * count)  # one batch, one UPDATE a host
        session.commit()
    assert None not in placed
    fractions = used_fractions(sessions)
    one_vm = max(max(demand.vcpus / vcpus, demand.memory_mib / memory) for vcpus, memory in SIZES.values())
    assert max(fractions.values()) - min(fractions.values()) <= one_vm, fractions
    assert sum(claimed(sessions, host)[0] for host in SIZES) == count


def test_pack_still_fills_the_fullest_host_first(sessions: Sessions) -> None:
    for host, (vcpus, memory) in SIZES.items():
        add_host(sessions, host, cpus=vcpus, memory_mib=memory)
    with sessions() as session:
        placed = scheduler.Placer(session, "pack").place_many([scheduler.Demand(1, 512, "x86_64")] * 30)
        session.commit()
    assert placed == [1] * 4 + [2] * 8 + [3] * 16 + [4] * 2

def test_overcommit_ratios(sessions: Sessions) -> None:
    add_host(sessions, 1, cpus=2, cpu_ratio=3.0, memory_mib=1000, memory_ratio=1.5)
    assert claim(sessions, 1, 6, 1500)
    assert not claim(sessions, 1, 1, 0) and not claim(sessions, 1, 0, 1)
    add_host(sessions, 2, cpus=100, cpu_ratio=0.29)  # 28.999999999999996 in floating point: 29 vCPUs
    assert claim(sessions, 2, 29, 1) and not claim(sessions, 2, 1, 1)
    add_host(sessions, 3, cpus=4, cpu_ratio=4.0, memory_mib=4096)
    with sessions() as session:
        placer = scheduler.Placer(session, "pack")
        placed = [placer.place(scheduler.Demand(4, 256, "x86_64")) for _ in range(5)]
        session.commit()
    assert placed == [3, 3, 3, 3, None] and claimed(sessions, 3) == (16, 1024)


def test_release_never_goes_below_zero(sessions: Sessions) -> None:
    add_host(sessions, 1, vcpus_claimed=3, memory_claimed_mib=2048)
    with sessions() as session:
        scheduler.release(session, 1, 1, 1024)
        session.commit()
    assert claimed(sessions, 1) == (2, 1024)
    with sessions() as session:
        scheduler.release(session, 1, 5, 4096)
        session.commit()
    assert claimed(sessions, 1) == (0, 0)


# -- the VM jobs' bookkeeping -----------------------------------------------------------


def placed_instance(sessions: Sessions, action: str, status: str, **args: int) -> str:
    """A 2 vCPU / 1 GiB instance placed on host 1 (its claim taken) and a dispatched ``action`` job on it."""
    with sessions() as session:
        org = Organisation(name=f"org-{uuid.uuid4().hex[:8]}")
        session.add(org)
        session.flush()
        instance = Instance(org_id=org.id, name="vm", uuid=str(uuid.uuid4()), vcpus=2, memory_mib=1024, disk_gib=10,
                            hypervisor_id=1, status=status)
        session.add(instance)
        session.flush()
        job = Job(id=uuid.uuid4().hex, org_id=org.id, batch=uuid.uuid4().hex, kind="vm", action=action,
                  subject_type="instance", subject_id=instance.id, hypervisor_id=1, args=dict(args),
                  state=JobState.dispatched)
        instance.job_id = job.id
        session.add(job)
        assert scheduler.claim(session, 1, 2, 1024)
        session.commit()
        return job.id


def settle(sessions: Sessions, job_id: str, kind: str) -> Instance:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        jobs.finish(session, [(job, jobs.Outcome(job_id, kind, None if kind == "ok" else "boom"))])
        session.commit()
        instance = session.get(Instance, job.subject_id)
        assert instance is not None
        assert (job.state, instance.job_id) == (JobState.succeeded if kind == "ok" else JobState.failed, None)
        return instance


def test_delete_success_releases_the_claim(sessions: Sessions) -> None:
    add_host(sessions, 1)
    failing, succeeding = (placed_instance(sessions, "delete", "deleting") for _ in range(2))
    assert claimed(sessions, 1) == (4, 2048)
    instance = settle(sessions, failing, "failed")
    assert (instance.status, instance.status_reason) == ("error", "delete failed: boom")
    assert claimed(sessions, 1) == (4, 2048)  # the domain may still exist: it keeps its room
    assert settle(sessions, succeeding, "ok").status == "deleted"
    assert claimed(sessions, 1) == (2, 1024)


def test_resize_claims(sessions: Sessions) -> None:
    add_host(sessions, 1, cpus=16, memory_mib=16384)
    grow = {"vcpus": 4, "memory_mib": 3072, "disk_gib": 10, "claimed_vcpus": 2, "claimed_memory_mib": 2048}

    def resize(**args: int) -> str:
        job_id = placed_instance(sessions, "resize", "stopped", **args)
        # The growth is claimed at dispatch (the VM kind's _claim_resize, api/jobs/vm.py), on top of the instance's own room.
        assert claim(sessions, 1, args["claimed_vcpus"], args["claimed_memory_mib"])
        return job_id

    failing = resize(**grow)
    assert claimed(sessions, 1) == (4, 3072)
    instance = settle(sessions, failing, "failed")
    assert (instance.status, instance.vcpus, instance.memory_mib) == ("stopped", 2, 1024)
    assert claimed(sessions, 1) == (2, 1024)  # the growth is given back

    instance = settle(sessions, resize(**grow), "ok")
    assert (instance.vcpus, instance.memory_mib, instance.status) == (4, 3072, "stopped")
    assert claimed(sessions, 1) == (2 + 4, 1024 + 3072)  # the growth is kept

    shrink = {"vcpus": 1, "memory_mib": 512, "disk_gib": 10, "claimed_vcpus": 0, "claimed_memory_mib": 0}
    instance = settle(sessions, resize(**shrink), "ok")
    assert (instance.vcpus, instance.memory_mib) == (1, 512)
    assert claimed(sessions, 1) == (6 + 1, 4096 + 512)  # the shrink gave back 1 vCPU and 512 MiB


def test_place_many_claims_once_per_host_and_recovers_from_a_stale_view(sessions: Sessions) -> None:
    add_host(sessions, 1, cpus=10, memory_mib=10240)
    add_host(sessions, 2, cpus=4, memory_mib=4096)
    demand = scheduler.Demand(1, 64, "x86_64")
    with sessions() as session:
        placer = scheduler.Placer(session, "pack")  # the fullest host first: 2 until it is full
        assert placer.place_many([demand] * 6) == [2, 2, 2, 2, 1, 1]
        session.commit()
    assert claimed(sessions, 1) == (2, 128) and claimed(sessions, 2) == (4, 256)
    with sessions() as session:
        placer = scheduler.Placer(session, "pack")
        # A stale view, as another API process's claims would leave it: host 1 looks empty.
        [stale] = [c for c in placer._candidates("x86_64") if c.id == 1]
        stale.free_vcpus, stale.free_memory_mib = 10, 10240
        hosts = placer.place_many([demand] * 9)
        session.commit()
    # Host 1's share (9) failed to claim as one; re-read, 8 fit one by one and 1 found no room.
    assert hosts == [1] * 8 + [None]
    assert claimed(sessions, 1) == (10, 640) and claimed(sessions, 2) == (4, 256)


def recount(sessions: Sessions) -> tuple[int, int]:
    """What the observer writes when host 1's report changes (api/reconcile/observer.py)."""
    from cloudland_api.reconcile.observer import Observer

    with sessions() as session:
        Observer._recount_claims(session, [1])
        session.commit()
    return claimed(sessions, 1)


def test_a_recount_during_a_resize_keeps_its_growth(sessions: Sessions) -> None:
    # Found by tests/chaos: a recount between a resize's dispatch (the growth claimed) and its
    # success (the instance's new size written) lost the growth for good.
    add_host(sessions, 1)
    growing = placed_instance(sessions, "resize", "stopped", vcpus=4, memory_mib=2048,
                              claimed_vcpus=2, claimed_memory_mib=1024)
    with sessions() as session:
        assert scheduler.claim(session, 1, 2, 1024)  # the growth, as VmKind._claim_resize claims it
        session.commit()
    assert recount(sessions) == (4, 2048), "the instance's 2 vCPUs and the 2 its resize claimed"
    assert settle(sessions, growing, "ok").vcpus == 4
    assert recount(sessions) == (4, 2048)
    failing = placed_instance(sessions, "resize", "stopped", vcpus=3, memory_mib=1024, claimed_vcpus=1)
    with sessions() as session:
        assert scheduler.claim(session, 1, 1, 0)
        session.commit()
    assert recount(sessions) == (7, 3072)
    settle(sessions, failing, "failed")
    assert recount(sessions) == (6, 3072), "a failed resize's growth is no one's"
