"""Network jobs: one VPC's changes carried to exactly its hypervisors (issue 11; services/netstate.py
makes them, proto/v1/network.proto is the contract).

    apply  the delta of one change (from one generation to the next), multicast to the
           hypervisors of the VPC that hold it: never a broadcast
    sync   hypervisors' whole state of the VPC, read from the database when sent (so at the
           VPC's newest generation): to hypervisors that join or leave the VPC or one of its
           subnets, and to those that answered an apply with ``need_sync``; a unicast for one,
           one multicast for several (``args["hypervisors"]``, the union of their subnets)
    full   a hypervisor's whole state of every VPC it holds, ``full`` (remove every other), to
           an agent that (re)started (subject: the hypervisor; made by reconcile/net.py)

Jobs of one VPC share its subject, so the engine runs them one at a time in the order they
were made: deltas arrive in generation order. An apply that a hypervisor failed, or answered
``need_sync``, is followed by a sync of that hypervisor; one that could not be reached is not
waited for (the VPC's later changes would wait with it) and misses the change until it is
synced again. Hypervisors the tree no longer has (gone, removed) are left out: nothing sent
there can arrive.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from cloudland import operations
from cloudland_api.jobs.kinds import Kind, Outcome, Plan, follow_up, register
from cloudland_api.models import VPC, Job
from cloudland_api.services import hypervisors, netstate
from cloudland_proto.v1 import network_pb2 as npb

log = logging.getLogger(__name__)

NET_TIMEOUT_S = 30.0
OPERATIONS = {"apply": "net.apply", "sync": "net.sync", "full": "net.sync"}


@register
class NetJobs(Kind):
    name = "net"
    subject = VPC
    # One unreachable hypervisor must not hold up every later change of its VPC for the retry
    # budget: it is left behind, and gets a sync when it answers need_sync or comes back.
    retry_unavailable = False

    def plan(self, plan: Plan, jobs: list[Job]) -> None:
        session = plan.session
        for job in jobs:
            operation = OPERATIONS.get(job.action, "")
            if operation not in operations.OPERATIONS:  # agents of this build cannot run it
                plan.decide(job, "failed", f"no agent operation {operation or job.action!r} is registered "
                                           "(cloudland/operations.py)")
                continue
            self._plan_one(plan, session, job)

    @staticmethod
    def _plan_one(plan: Plan, session: Session, job: Job) -> None:
        if job.action == "apply" or job.hypervisor_id is None:  # a delta, or a sync of several: a multicast
            wanted = job.args["hypervisors"]
            lost = hypervisors.lost_hosts(session, wanted)
            targets = [hv for hv in wanted if hv not in lost]
            if not targets:
                plan.decide(job, "ok", f"no hypervisor of the vpc to {job.action} can be reached: nothing to send")
            elif job.action == "apply":
                plan.send(job, "net.apply", targets, netstate.delta_of(job), NET_TIMEOUT_S)
            else:
                state = netstate.vpc_state(session, job.subject_id, targets)
                plan.send(job, "net.sync", targets, npb.NetSyncRequest(vpcs=[state]), NET_TIMEOUT_S)
            return
        assert job.hypervisor_id is not None  # a sync, or a full sync
        hv = job.hypervisor_id
        if hv in hypervisors.lost_hosts(session, [hv]):
            plan.decide(job, "ok", f"hypervisor {hv} is gone or removed: nothing to send")
            return
        if job.action == "full":
            request = npb.NetSyncRequest(full=True, vpcs=[netstate.vpc_state(session, vpc, hv)
                                                          for vpc in netstate.vpcs_of(session, hv)])
        else:
            request = npb.NetSyncRequest(vpcs=[netstate.vpc_state(session, job.subject_id, hv)])
        plan.send(job, "net.sync", hv, request, NET_TIMEOUT_S)

    def settle(self, session: Session, done: list[tuple[Job, Outcome]]) -> None:
        for job, outcome in done:
            if job.action != "apply":
                continue
            behind = sorted(hv for hv, r in outcome.results.items()
                            if r.status in ("failed", "timeout")
                            or (isinstance(r.result, npb.NetApplyResult) and r.result.need_sync))
            if behind:
                log.info("event=vpc_resync vpc=%d hypervisors=%s job=%s", job.subject_id, behind, job.id)
                follow_up(session, netstate.sync_jobs(session, job.subject_id, job.org_id, behind, job.user_id))
