"""A kind of job that only the tests have, in one module, with no edit to the engine: proof that
a new kind plugs in (api/jobs/kinds.py). It asks hypervisors to count its job id (the agents'
``test.count`` operation) and settles by writing what each one counted into the job's reason."""

from __future__ import annotations

from sqlalchemy.orm import Session

from cloudland_api.jobs import ALL, Kind, Outcome, Plan, register
from cloudland_api.models import Job
from cloudland_proto.v1 import diag_pb2 as diag


@register
class CountJobs(Kind):
    name = "test.count"
    subject = "counter"

    def plan(self, plan: Plan, jobs: list[Job]) -> None:
        for job in jobs:
            targets = job.args.get("hypervisors")  # a list: multicast; none: broadcast
            plan.send(job, "test.count", ALL if targets is None else targets, diag.TestCountRequest(key=job.id))

    def settle(self, session: Session, done: list[tuple[Job, Outcome]]) -> None:
        for job, outcome in done:
            counts = {hv: r.result.count if isinstance(r.result, diag.TestCountResult) else 0
                      for hv, r in sorted(outcome.results.items())}
            job.reason = f"counts {counts}" + (f"; {outcome.reason}" if outcome.reason else "")
