"""The chaos suite (issue 15, must show 4): a fault in the middle of a batch of VM operations,
then invariants, on SQLite and on PostgreSQL.

A cloud as operators run it (``cloudland up``: 32 simulated hypervisors, 4 per leaf rank, fan-out
4 so that relays exist, heartbeat 0.5 s so a silent rank is lost after 5 s) per database. Each
scenario submits a mixed workload, creates (``POST /instances``), stops and deletes
(``POST /instances/actions``) and resizes of VMs that earlier scenarios stopped, waits until
it is under way, injects one fault, and then checks:
- every job terminal and succeeded: none failed, none lost (still unfinished after 5 min);
- no VM in ``error``; every VM as the operations said (running, stopped, deleted);
- the database and the hypervisors agree (``vm.list`` through the tree): each VM's domain
  exactly once, on the hypervisor the API names, in the right power state; no domain of a
  deleted VM; claims equal to what the VMs placed on each hypervisor hold; given the
  reconciler up to 2 minutes to get there, with no human action.
Faults go in through data or signals, never through the code's own hooks: SIGKILL of a leaf,
of a relay, of the root and of the API; SIGSTOP of a leaf past its "lost" deadline; SQLite's
write lock held by another connection for 5 s; PostgreSQL's server killed (postmaster and
backends, SIGKILL) and started again. The slow scenarios run on one database only; the table
(scenario, recovery time, jobs, duplicates, time to agreement) is printed at the end of the run.

    .venv/bin/python -m pytest tests/chaos -p no:cacheprovider     # CLOUDLAND_CHAOS_OPS=1000: the issue's batch
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from cloudland.errors import RootUnreachable
from cloudland_launcher.harness import wait_for
from tests.chaos.conftest import ROWS
from tests.upcloud import TERMINAL, UpCloud, start_up, stop_up

pytestmark = pytest.mark.slow

HYPERVISORS, PER_LEAF, FANOUT = 32, 4, 4   # 8 leaf ranks under 2 relays
HEARTBEAT_S, LOST_AFTER = 0.5, 10           # a silent rank is lost after 5 s
# Operations per scenario: 5/8 creates, 3/16 stops, 1/8 deletes and 1/16 resizes (the first
# scenario of a database has no VMs yet to stop, delete or resize). 64 in CI; the batch is
# 1,000 (CLOUDLAND_CHAOS_OPS=1000), which does not pass yet: docs/architecture.md "Chaos".
OPS = int(os.environ.get("CLOUDLAND_CHAOS_OPS", "64"))
STOPS, DELETES, RESIZES = OPS * 3 // 16, OPS // 8, OPS // 16
CREATES = OPS - STOPS - DELETES - RESIZES
RECOVERY_S = 30.0     # the tree whole and the API answering after the fault, at most
JOBS_S = 300.0        # every job terminal, at most
AGREE_S = 120.0       # database and hypervisors in agreement, at most (the reconciler's work)


@dataclass
class World:
    """One database's cloud and what its VMs should be by now."""

    database: str
    cloud: UpCloud
    url: str
    server: Any = None                                   # the PostgresServer, for the database's own fault
    expect: dict[int, str] = field(default_factory=dict)  # instance id -> running | stopped | deleted
    uuids: dict[int, str] = field(default_factory=dict)
    resized: set[int] = field(default_factory=set)


_worlds: dict[str, World] = {}


@pytest.fixture(scope="module")
def worlds(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], World]]:
    """The cloud of a database, started at its first scenario; the other database's is stopped
    first, so one cloud runs at a time."""
    stack: list[Any] = []

    def world(database: str) -> World:
        if database in _worlds:
            return _worlds[database]
        for other in list(_worlds.values()):
            stop_up(other.cloud)
        _worlds.clear()
        while stack:
            stack.pop().__exit__(None, None, None)
        base = tmp_path_factory.mktemp(f"chaos-{database}")
        server = None
        if database == "sqlite":
            url = f"sqlite:///{base / 'var' / 'cloudland.db'}"
        else:
            server = request.getfixturevalue("postgres_server")
            context = server.database()
            url = context.__enter__()
            stack.append(context)
            # The session's server trades durability for speed (synchronous_commit off), which a
            # crash of the server turns into lost commits that the API was told were made: jobs it
            # had ended came back as dispatched. Production keeps it on; so does this database.
            server._admin.execute(f'ALTER DATABASE "{url.rsplit("/", 1)[1]}" SET synchronous_commit = on')
        # Overcommit: thousands of VMs pile up over the scenarios on 32 test:/// hosts (16 CPUs, 3 GiB).
        cloud = start_up(base, HYPERVISORS, PER_LEAF, FANOUT, CLOUDLAND_API_DATABASE_URL=url,
                         CLOUDLAND_HEARTBEAT_S=str(HEARTBEAT_S), CLOUDLAND_LOST_AFTER=str(LOST_AFTER),
                         CLOUDLAND_API_CPU_RATIO="64", CLOUDLAND_API_MEMORY_RATIO="64")
        _worlds[database] = World(database, cloud, url, server)
        return _worlds[database]

    yield world
    for w in list(_worlds.values()):
        stop_up(w.cloud)
    _worlds.clear()
    while stack:
        stack.pop().__exit__(None, None, None)


# -- the workload ---------------------------------------------------------------------------


def submit(world: World, tag: str) -> tuple[list[str], list[str]]:
    """Resizes, stops, deletes and creates, all submitted now; returns (batches, single jobs).

    The creates go last, in one request: at 1,000 operations the resizes' one request each takes
    long enough on a loaded machine for a batch submitted before them to have ended before the
    fault (measured: every job of the batch succeeded by the time the fault came)."""
    cloud, rng = world.cloud, random.Random(tag)
    running = sorted(i for i, s in world.expect.items() if s == "running")
    stopped = sorted(i for i, s in world.expect.items() if s == "stopped" and i not in world.resized)
    batches, singles = [], []
    for instance_id in stopped[:RESIZES]:
        singles.append(cloud.post(f"/instances/{instance_id}/resize", {"flavor": "medium"})["id"])
        world.resized.add(instance_id)
    to_stop = rng.sample(running, min(STOPS, len(running)))
    to_delete = rng.sample([i for i in running if i not in to_stop], min(DELETES, len(running) - len(to_stop)))
    for action, ids, after in (("stop", to_stop, "stopped"), ("delete", to_delete, "deleted")):
        if ids:
            batches.append(cloud.post("/instances/actions", {"action": action, "ids": ids})["batch"])
            world.expect.update(dict.fromkeys(ids, after))
    created = cloud.post("/instances", {"name": tag, "flavor": "small", "image": "tiny", "count": CREATES})
    batches.insert(0, created["batch"])
    for instance in created["instances"]:
        world.expect[instance["id"]] = "running"
        world.uuids[instance["id"]] = instance["uuid"]
    return batches, singles


def job_states(world: World, batches: list[str], singles: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for batch in batches:
        for state, n in world.cloud.counts(batch).items():
            counts[state] = counts.get(state, 0) + n
    for job_id in singles:
        state = world.cloud.get(f"/jobs/{job_id}")["state"]
        counts[state] = counts.get(state, 0) + 1
    return counts


def disagreements(world: World) -> list[str]:
    """Where the database, the hypervisors and the operations part ways ([] when they agree)."""
    cloud = world.cloud
    where = cloud.domains()
    live = {i["id"]: i for i in cloud.instances()}
    problems = [f"VM {i['name']} is in error: {i['status_reason']}" for i in live.values() if i["status"] == "error"]
    for instance_id, want in world.expect.items():
        instance = live.get(instance_id)
        status = instance["status"] if instance else "deleted"
        domain = f"cl-{world.uuids[instance_id]}"
        if status != want:
            problems.append(f"instance {instance_id} is {status}, should be {want}")
        elif want == "deleted":
            if domain in where:
                problems.append(f"deleted instance {instance_id} still has its domain: {where[domain]}")
        elif where.get(domain) != [(instance["hypervisor_id"], "running" if want == "running" else "shutoff")]:
            problems.append(f"instance {instance_id} ({want} on {instance['hypervisor_id']}) has {where.get(domain)}")
    problems += [f"domain {name} exists {len(copies)} times: {copies}" for name, copies in where.items()
                 if len(copies) > 1]
    for hypervisor in cloud.get("/hypervisors", limit=500)["items"]:
        held = sum(i["vcpus"] for i in live.values() if i["hypervisor_id"] == hypervisor["id"])
        if hypervisor["vcpus_claimed"] != held:
            problems.append(f"hypervisor {hypervisor['id']} claims {hypervisor['vcpus_claimed']} vCPUs, "
                            f"its VMs hold {held}")
    return problems


# -- the faults (each returns when it is over; the recovery is timed from its start) ------------


def victim(world: World, relay: bool) -> tuple[str, int]:
    """A rank of the kind asked for (the first by range: its hypervisors hold VMs by now)."""
    ranks = world.cloud.ranks()
    node = sorted(n for n, p in ranks.items() if p.relay == relay)[0]
    return node, ranks[node].pid


def replaced(world: World, node: str, pid: int) -> bool:
    try:
        rank = world.cloud.ranks().get(node)
    except RootUnreachable:
        # A rank's death can take the ranks receiving from it along (MPICH aborts a receiver whose
        # sender died mid-message: docs/architecture.md "Supervision"), the root included; its
        # supervisor starts it again, and the scenario's checks say whether anything was lost.
        return False
    return rank is None or rank.pid != pid


def kill_rank(relay: bool) -> Callable[[World], None]:
    def fault(world: World) -> None:
        node, pid = victim(world, relay)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: replaced(world, node, pid), 60, f"the rank {node} replaced")
    return fault


def stop_leaf(world: World) -> None:
    node, pid = victim(world, relay=False)
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(HEARTBEAT_S * LOST_AFTER + 1.5)  # past the deadline: its parent takes it for lost
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def kill_root(world: World) -> None:
    old = world.cloud.root.health().peers[0].pid
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: world.cloud.tree_whole(old), 60, "a new root with the whole tree", every=0.05)


def kill_api(world: World) -> None:
    old = int((world.cloud.state_dir / "api.pid").read_text())
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: not world.cloud.answers(), 10, "the killed API to stop answering", every=0.05)


def lock_database(world: World) -> None:
    path = world.url.split("///", 1)[1]
    connection = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")  # every writer of the API now waits for us
        time.sleep(5.0)
        connection.execute("ROLLBACK")
    finally:
        connection.close()


def kill_database(world: World) -> None:
    world.server.crash()
    time.sleep(2.0)
    world.server.recover()


SCENARIOS = [
    ("leaf killed", kill_rank(relay=False), ("sqlite", "postgresql")),
    ("relay killed", kill_rank(relay=True), ("sqlite",)),
    ("leaf stopped past lost", stop_leaf, ("sqlite",)),
    ("root killed", kill_root, ("sqlite",)),
    ("API killed", kill_api, ("sqlite", "postgresql")),
    ("SQLite locked 5 s", lock_database, ("sqlite",)),
    ("PostgreSQL killed", kill_database, ("postgresql",)),
]
CASES = [pytest.param(database, name, fault, id=f"{database}-{name.replace(' ', '-')}",
                      marks=[pytest.mark.postgres] if database == "postgresql" else [])
         for database in ("sqlite", "postgresql") for name, fault, databases in SCENARIOS if database in databases]


@pytest.mark.parametrize(("database", "scenario", "fault"), CASES)
def test_fault_mid_batch_loses_nothing(worlds: Callable[[str], World], database: str, scenario: str,
                                       fault: Callable[[World], None]) -> None:
    world = worlds(database)
    cloud = world.cloud
    tag = scenario.lower().replace(" ", "-").replace("sqlite", "db").replace("postgresql", "db")
    batches, singles = submit(world, tag)
    # Under way: the creates' batch has begun to succeed (one request; the singles are not asked, at
    # 1,000 operations asking each would take longer than the batch).
    wait_for(lambda: cloud.counts(batches[0]).get("succeeded", 0) >= 5, 120, "the workload under way", every=0.05)
    at_fault = job_states(world, batches, singles)
    in_flight = sum(n for state, n in at_fault.items() if state not in TERMINAL)
    root_before = cloud.root.health().peers[0].pid
    started = time.monotonic()
    fault(world)
    wait_for(lambda: cloud.tree_whole() and cloud.answers(), RECOVERY_S * 4, "the tree whole and the API answering",
             every=0.1)
    recovery = time.monotonic() - started
    root_restarted = cloud.root.health().peers[0].pid != root_before

    def ended() -> bool:
        return all(state in TERMINAL for state, n in job_states(world, batches, singles).items() if n)

    try:
        wait_for(ended, JOBS_S, "every job of the workload terminal", every=0.5)
    except AssertionError:
        pass  # counted as lost below
    states = job_states(world, batches, singles)
    total = sum(states.values())
    succeeded, failed = states.get("succeeded", 0), states.get("failed", 0) + states.get("timeout", 0)
    lost = total - succeeded - failed
    settled = time.monotonic()
    try:
        wait_for(lambda: not disagreements(world), AGREE_S, "database and hypervisors in agreement", every=1.0)
    except AssertionError:
        pass  # the problems are asserted below, with what they are
    problems = disagreements(world)
    duplicates = sum(1 for p in problems if "exists" in p and "times" in p)
    ROWS.append({"database": database, "scenario": scenario, "operations": total, "in_flight": in_flight,
                 "recovery_s": recovery,
                 "succeeded": succeeded,
                 "failed": failed, "lost": lost, "duplicates": duplicates, "agreed_s": time.monotonic() - settled, "root_restarted": root_restarted,
                 "load": os.getloadavg()[0]})
    print(f"{database} {scenario}: jobs at the fault {at_fault}, after {states}; recovery {recovery:.1f} s"
          f"{'; the root was restarted' if root_restarted else ''}")
    assert lost == 0 and failed == 0, f"{scenario}: {failed} failed, {lost} not terminal of {total} ({states})"
    assert not problems, f"{scenario}: {len(problems)} disagreements, e.g. {problems[:5]}"
    assert recovery <= RECOVERY_S, f"{scenario}: recovery took {recovery:.1f} s (bound {RECOVERY_S} s)"
