"""A job kind added in one module (probe_jobs.py) runs through a real tree as a broadcast and as
a multicast, and settles, with the engine as it is."""

from __future__ import annotations

import uuid
from pathlib import Path

from cloudland.client import RootClient
from cloudland_api import jobs
from cloudland_api.db import make_engine, session_factory, upgrade
from cloudland_api.models import TERMINAL, Job, JobState, Organisation
from cloudland_launcher.harness import wait_for
from tests.integration import probe_jobs


def test_a_new_kind_runs_as_broadcast_and_multicast_through_a_real_tree(make_tree, tmp_path: Path) -> None:
    tree = make_tree(6, 1, 2)  # fanout 2: relays between the root and the leaves
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    database = make_engine(url)
    sessions = session_factory(database, write=True)
    assert jobs.KINDS["test.count"].__class__ is probe_jobs.CountJobs  # registered by its import alone
    with sessions() as session:
        org = Organisation(name="probe")
        session.add(org)
        session.flush()
        specs = {"broadcast": {}, "multicast": {"hypervisors": [1, 4, 5]}, "unknown": {"hypervisors": [2, 99]}}
        ids = {}
        for name, args in specs.items():
            job = Job(id=uuid.uuid4().hex, org_id=org.id, batch=name, kind="test.count", action="count",
                      subject_type="counter", subject_id=len(ids), args=args, state=JobState.pending)
            session.add(job)
            ids[name] = job.id
        session.commit()
    # No ``ready`` event: the harness returns a tree that answers already. (An event nobody sets,
    # as here before, held the planner for its 30 s limit before the first job was sent.)
    engine = jobs.Engine(sessions, RootClient(tree.endpoint))
    engine.start()
    try:
        engine.submit(ids.values())

        def ended() -> dict[str, Job] | None:
            with sessions() as session:
                rows = {name: session.get(Job, job_id) for name, job_id in ids.items()}
                return rows if all(r is not None and r.state in TERMINAL for r in rows.values()) else None  # type: ignore[misc]

        rows = wait_for(ended, 60, "the three jobs to settle")
    finally:
        engine.stop()
        database.dispose()
    assert isinstance(rows, dict)
    broadcast, multicast, unknown = rows["broadcast"], rows["multicast"], rows["unknown"]
    # Each hypervisor ran each job exactly once, and only the hypervisors it was sent to.
    assert (broadcast.state, broadcast.targets, broadcast.reason) == (
        JobState.succeeded, {"all": True}, "counts {0: 1, 1: 1, 2: 1, 3: 1, 4: 1, 5: 1}")
    assert (multicast.state, multicast.targets, multicast.reason) == (
        JobState.succeeded, {"hypervisors": [1, 4, 5]}, "counts {1: 1, 4: 1, 5: 1}")
    # A target the tree does not have fails the job, named; the others still ran.
    assert unknown.state == JobState.failed
    assert unknown.reason is not None and unknown.reason.startswith(
        "counts {2: 1, 99: 0}; failed on 1 of 2 hypervisors: hypervisor 99: ")
    assert all(r.attempts == 1 for r in rows.values())
