"""Image jobs: ``evict``, a broadcast that drops a deleted image's cached copies everywhere.

Best effort, after the delete has committed: a hypervisor whose guests still have overlays on
the base keeps it (``in_use``); one that cannot be reached is not asked again (it keeps the copy
until a later delete of the same bytes), so the job ends as soon as every reachable hypervisor
answered. Its reason counts what became of the copies.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from cloudland_api.jobs.kinds import ALL, Kind, Outcome, Plan, register
from cloudland_api.models import IMAGE, Job
from cloudland_proto.v1 import image_pb2 as ipb

log = logging.getLogger(__name__)

EVICT_TIMEOUT_S = 60.0


@register
class ImageJobs(Kind):
    name = "image"
    subject = IMAGE
    retry_unavailable = False

    def plan(self, plan: Plan, jobs: list[Job]) -> None:
        for job in jobs:
            if job.action != "evict":
                plan.decide(job, "failed", f"unknown image action {job.action!r}")
                continue
            plan.send(job, "image.evict", ALL, ipb.ImageEvictRequest(sha256=job.args["sha256"]), EVICT_TIMEOUT_S)

    def settle(self, session: Session, done: list[tuple[Job, Outcome]]) -> None:
        for job, outcome in done:
            counts = evict_counts(outcome)
            summary = f"evicted on {counts['evicted']}, kept in use on {counts['in_use']}, failed on {counts['failed']}"
            job.reason = summary if outcome.ok else f"{summary}: {outcome.reason}"
            log.info("event=image_evicted image_id=%d sha256=%s evicted=%d in_use=%d failed=%d job=%s",
                     job.subject_id, job.args["sha256"], counts["evicted"], counts["in_use"], counts["failed"], job.id)


def evict_counts(outcome: Outcome) -> dict[str, int]:
    """How many hypervisors evicted (or had nothing), kept the copy in use, or failed."""
    counts = {"evicted": 0, "in_use": 0, "failed": 0}
    for result in outcome.results.values():
        if result.status != "ok":
            counts["failed"] += 1
        elif isinstance(result.result, ipb.ImageEvictResult) and result.result.in_use:
            counts["in_use"] += 1
        else:
            counts["evicted"] += 1
    return counts
