"""Hypervisor lifecycle through the API: drain, undrain, remove, and the VMs of hosts the tree
no longer has (``gone``) or the operator removed.

There is no tree here, which makes "nothing is sent" visible: a delete on a lost host ends
without a job engine; the console routes refuse with 409 where asking a missing tree would be
503; and a real job engine pointed at a root that is not there still ends a lost host's jobs.
"""

from __future__ import annotations

import pytest
from sqlalchemy import update

from cloudland_api.services import scheduler
from cloudland.client import RootClient
from cloudland_api.jobs import Engine
from cloudland_api.models import TERMINAL, Hypervisor, Instance, Job, Role
from cloudland_launcher.harness import free_port, wait_for
from tests.api.conftest import Api, Launcher, add_hypervisor, settle
from tests.api.test_console import closed_with

HYPERVISORS = "/api/v1/hypervisors"
INSTANCES = "/api/v1/instances"
GONE_7 = "hypervisor 7 is gone (the tree no longer has it)"
NOTE_7 = f"{GONE_7}: nothing was sent and nothing was left to clean there"


def place(api: Api, launch: Launcher, name: str, hypervisor: int, headers: dict[str, str] | None = None) -> dict:
    """An instance created by ``headers``' caller, placed on ``hypervisor`` with its claim, its
    create job ended: running."""
    accepted = launch(name, headers=headers)
    [instance], [job] = accepted["instances"], accepted["jobs"]
    with api.app.state.write_sessions() as session:
        session.execute(update(Instance).where(Instance.id == instance["id"]).values(hypervisor_id=hypervisor))
        assert scheduler.claim(session, hypervisor, instance["vcpus"], instance["memory_mib"], new_vm=False)
        session.commit()
    settle(api, job["id"])
    return instance


def set_state(api: Api, hypervisor: int, state: str) -> None:
    """What the reconciler (gone) or a removal (removed) would write."""
    with api.app.state.write_sessions() as session:
        session.execute(update(Hypervisor).where(Hypervisor.id == hypervisor).values(state=state))
        session.commit()


def hyper(api: Api, headers: dict[str, str], hypervisor: int) -> dict:
    reply = api.client.get(f"{HYPERVISORS}/{hypervisor}", headers=headers)
    assert reply.status_code == 200, reply.text
    return reply.json()


def delete_vm(api: Api, headers: dict[str, str], instance: dict) -> dict:
    reply = api.client.delete(f"{INSTANCES}/{instance['id']}", headers=headers)
    assert reply.status_code == 202, reply.text
    return reply.json()


def conflict(reply: object) -> str:
    """The message of a 409 (asserted)."""
    assert reply.status_code == 409 and reply.json()["error"]["code"] == "conflict", reply.text  # type: ignore[attr-defined]
    message: str = reply.json()["error"]["message"]  # type: ignore[attr-defined]
    return message


# -- drain and undrain ----------------------------------------------------------------------


def test_drain_lists_the_vms_of_every_organisation_that_remain_and_twice_is_fine(
        api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    add_hypervisor(api, 7)
    add_hypervisor(api, 8)
    acme = api.add_user("ann", "acme", Role.admin)
    web = place(api, launch, "web", 7)
    db = place(api, launch, "db", 7, headers=acme)
    place(api, launch, "elsewhere", 8)
    settle(api, delete_vm(api, admin_headers, place(api, launch, "old", 7))["id"])  # deleted: not listed

    first = api.client.post(f"{HYPERVISORS}/7/drain", headers=admin_headers)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["hypervisor"]["id"] == 7 and body["hypervisor"]["draining"] is True
    remaining = body["remaining"]
    assert [(vm["id"], vm["name"], vm["organisation"], vm["status"]) for vm in remaining] == [
        (web["id"], "web", "admin", "running"), (db["id"], "db", "acme", "running")]
    assert remaining[0]["org_id"] != remaining[1]["org_id"]
    second = api.client.post(f"{HYPERVISORS}/7/drain", headers=admin_headers)
    assert second.status_code == 200 and second.json() == body
    assert hyper(api, admin_headers, 7)["draining"] is True
    assert hyper(api, admin_headers, 8)["draining"] is False
    listed = api.client.get(HYPERVISORS, headers=admin_headers).json()["items"]
    assert [(h["id"], h["draining"]) for h in listed] == [(7, True), (8, False)]


def test_a_drained_host_takes_no_new_vms_until_undrained(api: Api, admin_headers: dict[str, str]) -> None:
    add_hypervisor(api, 1, cpus=64)
    add_hypervisor(api, 2, cpus=8)
    demand = scheduler.Demand(1, 512, "x86_64")

    def placed() -> int | None:
        with api.app.state.write_sessions() as session:
            host = scheduler.Placer(session, "spread").place(demand)
            session.rollback()
            return host

    assert placed() == 1  # the most free memory, then the lower id
    assert api.client.post(f"{HYPERVISORS}/1/drain", headers=admin_headers).status_code == 200
    assert placed() == 2
    with api.app.state.write_sessions() as session:
        assert not scheduler.claim(session, 1, 1, 512)  # the claim re-checks the flag, too
        assert scheduler.claim(session, 1, 1, 512, new_vm=False)  # its own VMs may still grow
        session.rollback()
    # Enabling is another switch: it does not cancel a drain (an operator re-enabling after
    # maintenance must not undo another's drain).
    assert api.client.patch(f"{HYPERVISORS}/1", json={"enabled": True}, headers=admin_headers).json()["draining"]
    assert placed() == 2
    undrained = api.client.post(f"{HYPERVISORS}/1/undrain", headers=admin_headers)
    assert undrained.status_code == 200 and undrained.json()["draining"] is False
    assert placed() == 1
    assert api.client.post(f"{HYPERVISORS}/1/undrain", headers=admin_headers).json()["draining"] is False


# -- removal --------------------------------------------------------------------------------


def test_remove_is_refused_while_vms_remain_then_leaves_a_tombstone(api: Api, admin_headers: dict[str, str],
                                                                    launch: Launcher) -> None:
    add_hypervisor(api, 7)
    add_hypervisor(api, 8)
    acme = api.add_user("ann", "acme", Role.admin)
    web, db = place(api, launch, "web", 7), place(api, launch, "db", 7, headers=acme)
    message = conflict(api.client.delete(f"{HYPERVISORS}/7", headers=admin_headers))
    assert message == (f"hypervisor 7 still has 2 VMs: web (instance {web['id']}, admin, running), db (instance "
                       f"{db['id']}, acme, running); drain it (cloudland hyper drain 7) and delete or move them first")
    assert hyper(api, admin_headers, 7)["state"] == "up"

    for vm, headers in ((web, admin_headers), (db, acme)):
        settle(api, delete_vm(api, headers, vm)["id"])
    removed = api.client.delete(f"{HYPERVISORS}/7", headers=admin_headers)
    assert removed.status_code == 200 and removed.json()["state"] == "removed", removed.text
    assert api.client.delete(f"{HYPERVISORS}/7", headers=admin_headers).json() == removed.json()  # again: the same
    assert hyper(api, admin_headers, 7) == removed.json()
    listing = api.client.get(HYPERVISORS, headers=admin_headers).json()
    assert ([h["id"] for h in listing["items"]], listing["next_after"]) == ([8], None)
    every = api.client.get(HYPERVISORS, params={"include_removed": "true"}, headers=admin_headers).json()
    assert [(h["id"], h["state"]) for h in every["items"]] == [(7, "removed"), (8, "up")]

    for method, path, body in (("post", "7/drain", None), ("post", "7/undrain", None),
                               ("patch", "7", {"enabled": True})):
        message = conflict(api.client.request(method, f"{HYPERVISORS}/{path}", json=body, headers=admin_headers))
        assert message == "hypervisor 7 was removed: it takes no VMs and no more changes"
    # With the other host closed, only the removed one has room: nothing is placed.
    assert api.client.patch(f"{HYPERVISORS}/8", json={"enabled": False}, headers=admin_headers).status_code == 200
    with api.app.state.write_sessions() as session:
        assert scheduler.Placer(session, "spread").place(scheduler.Demand(1, 64, "x86_64")) is None
        assert not scheduler.claim(session, 7, 1, 64)
        session.rollback()


def test_a_refused_removal_names_ten_vms_and_counts_the_rest(api: Api, admin_headers: dict[str, str],
                                                             launch: Launcher) -> None:
    add_hypervisor(api, 7)
    accepted = launch("many", count=12)  # still building: placed VMs count whatever their status
    with api.app.state.write_sessions() as session:
        session.execute(update(Instance).values(hypervisor_id=7))
        session.commit()
    message = conflict(api.client.delete(f"{HYPERVISORS}/7", headers=admin_headers))
    ids = [i["id"] for i in accepted["instances"]]
    assert message.startswith(f"hypervisor 7 still has 12 VMs: many-1 (instance {ids[0]}, admin, building), ")
    assert f"many-10 (instance {ids[9]}, admin, building) and 2 more; drain it" in message
    assert "many-11" not in message


def test_who_may_drain_undrain_and_remove(api: Api, admin_headers: dict[str, str]) -> None:
    add_hypervisor(api, 2)
    routes = [("post", "drain"), ("post", "undrain"), ("delete", "")]

    def call(method: str, action: str, hypervisor: object, headers: dict[str, str]) -> object:
        return api.client.request(method, f"{HYPERVISORS}/{hypervisor}/{action}".rstrip("/"), headers=headers)

    for role in (Role.admin, Role.member, Role.reader):
        tenant = api.add_user(f"t-{role.value}", "tenant", role)
        for method, action in routes:
            for hypervisor in (2, 99):  # 403 before 404: tenants may not probe ids
                reply = call(method, action, hypervisor, tenant)
                assert reply.status_code == 403 and "operator" in reply.json()["error"]["message"], reply.text
    for role in (Role.member, Role.reader):
        operator = api.add_user(f"op-{role.value}", "admin", role)
        for method, action in routes:
            reply = call(method, action, 2, operator)
            assert reply.status_code == 403 and "needs admin" in reply.json()["error"]["message"], reply.text
            assert call(method, action, 99, operator).status_code == 403  # the role decides first
    for method, action in routes:
        reply = call(method, action, 42, admin_headers)
        assert reply.status_code == 404 and "hypervisor 42 not found" in reply.json()["error"]["message"]
        for bad in ("-1", "abc", "1.5", str(2**40)):
            reply = call(method, action, bad, admin_headers)
            assert reply.status_code == 422 and "hypervisor_id (path)" in reply.json()["error"]["message"]
        assert call(method, action, 2, {}).status_code == 401
    assert (hyper(api, admin_headers, 2)["state"], hyper(api, admin_headers, 2)["draining"]) == ("up", False)


# -- VMs on a gone or removed hypervisor ----------------------------------------------------


def test_a_vm_on_a_gone_hypervisor_is_deleted_at_once(api: Api, admin_headers: dict[str, str],
                                                      launch: Launcher) -> None:
    add_hypervisor(api, 7)
    vm = place(api, launch, "web", 7)
    assert (hyper(api, admin_headers, 7)["vcpus_claimed"], hyper(api, admin_headers, 7)["memory_claimed_mib"]) == \
        (1, 512)
    set_state(api, 7, "gone")
    job = delete_vm(api, admin_headers, vm)
    assert (job["action"], job["state"], job["reason"], job["attempts"], job["hypervisor_id"]) == (
        "delete", "succeeded", NOTE_7, 0, 7)
    assert job["finished_at"] is not None
    shown = api.client.get(f"{INSTANCES}/{vm['id']}", headers=admin_headers).json()
    assert (shown["status"], shown["job_id"], shown["status_reason"]) == ("deleted", None, None)
    gone = hyper(api, admin_headers, 7)
    assert (gone["state"], gone["vcpus_claimed"], gone["memory_claimed_mib"]) == ("gone", 0, 0)
    history = api.client.get("/api/v1/jobs", params={"instance": vm["id"]}, headers=admin_headers).json()["items"]
    assert [(j["action"], j["state"]) for j in history] == [("delete", "succeeded"), ("create", "succeeded")]
    assert api.client.get(INSTANCES, headers=admin_headers).json()["items"] == []
    assert launch("web")["instances"][0]["name"] == "web"  # the name is free again


@pytest.mark.parametrize(("state", "why"), [("gone", GONE_7), ("removed", "hypervisor 7 was removed")])
def test_other_actions_on_a_lost_hypervisor_say_why(api: Api, admin_headers: dict[str, str], launch: Launcher,
                                                    state: str, why: str) -> None:
    add_hypervisor(api, 7)
    vm = place(api, launch, "con", 7)
    set_state(api, 7, state)
    url = f"{INSTANCES}/{vm['id']}"
    for action, body in (("start", None), ("stop", None), ("reboot", None), ("resize", {"flavor": "small"}),
                         ("rebuild", {"image": "img"}), ("capture", {"name": "copy", "disk_format": "qcow2"})):
        message = conflict(api.client.post(f"{url}/{action}", json=body, headers=admin_headers))
        assert message == f"cannot {action} instance {vm['id']} (con): {why}; its VMs can only be deleted"
    # Refused before asking the tree: with none configured, asking would have been a 503.
    message = conflict(api.client.get(f"{url}/vnc", headers=admin_headers))
    assert message == f"cannot attach to the consoles of instance {vm['id']} (con): {why}; its VMs can only be deleted"
    code, reason = closed_with(api, f"{url}/console", admin_headers)
    assert code == 4409 and why in reason
    shown = api.client.get(url, headers=admin_headers).json()
    assert (shown["status"], shown["job_id"]) == ("running", None)
    assert [i["name"] for i in api.client.get("/api/v1/images", headers=admin_headers).json()["items"]] == ["img"]
    assert delete_vm(api, admin_headers, vm)["state"] == "succeeded"


def test_batch_actions_on_live_and_gone_vms(api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    add_hypervisor(api, 7)
    add_hypervisor(api, 8)
    live, lost = place(api, launch, "web-1", 8), place(api, launch, "web-2", 7)
    set_state(api, 7, "gone")
    ids = [live["id"], lost["id"]]
    message = conflict(api.client.post(f"{INSTANCES}/actions", json={"action": "stop", "ids": ids},
                                       headers=admin_headers))
    assert message == f"cannot stop instance {lost['id']} (web-2): {GONE_7}; its VMs can only be deleted"
    assert all(api.client.get(f"{INSTANCES}/{i}", headers=admin_headers).json()["job_id"] is None for i in ids)

    reply = api.client.post(f"{INSTANCES}/actions", json={"action": "delete", "ids": ids}, headers=admin_headers)
    assert reply.status_code == 202, reply.text
    jobs = {j["instance_id"]: j for j in reply.json()["jobs"]}
    assert (jobs[live["id"]]["state"], jobs[lost["id"]]["state"], jobs[lost["id"]]["reason"]) == (
        "pending", "succeeded", NOTE_7)
    counts = api.client.get("/api/v1/jobs", params={"batch": reply.json()["batch"], "limit": 1},
                            headers=admin_headers).json()["counts"]
    assert (counts["pending"], counts["succeeded"]) == (1, 1)
    statuses = {i: api.client.get(f"{INSTANCES}/{i}", headers=admin_headers).json()["status"] for i in ids}
    assert statuses == {live["id"]: "deleting", lost["id"]: "deleted"}
    assert (hyper(api, admin_headers, 7)["vcpus_claimed"], hyper(api, admin_headers, 8)["vcpus_claimed"]) == (0, 1)


def test_jobs_waiting_for_a_host_that_went_gone_end_without_the_tree(api: Api, admin_headers: dict[str, str],
                                                                     launch: Launcher) -> None:
    """A real job engine, with nothing listening at its root: a job sent would only be retried,
    never end. The jobs of a host gone while they waited end at once, saying why."""
    add_hypervisor(api, 7)
    stopping, deleting = place(api, launch, "web-1", 7), place(api, launch, "web-2", 7)
    stop = api.client.post(f"{INSTANCES}/{stopping['id']}/stop", headers=admin_headers).json()
    delete = delete_vm(api, admin_headers, deleting)
    assert (stop["state"], delete["state"]) == ("pending", "pending")
    set_state(api, 7, "gone")
    engine = Engine(api.app.state.write_sessions, RootClient(f"127.0.0.1:{free_port()}"))
    engine.start()  # takes every unfinished job, as after a restart
    try:
        def ended() -> dict[str, Job] | None:
            with api.app.state.sessions() as session:
                jobs = {j: session.get(Job, j) for j in (stop["id"], delete["id"])}
                return jobs if all(j is not None and j.state in TERMINAL for j in jobs.values()) else None

        jobs = wait_for(ended, 10, "both jobs to end")
    finally:
        engine.stop()
    assert isinstance(jobs, dict)
    assert (jobs[stop["id"]].state.value, jobs[stop["id"]].reason, jobs[stop["id"]].attempts) == (
        "failed", f"{GONE_7}: nothing was sent", 0)
    assert (jobs[delete["id"]].state.value, jobs[delete["id"]].reason) == ("succeeded", NOTE_7)
    shown = {vm["id"]: api.client.get(f"{INSTANCES}/{vm['id']}", headers=admin_headers).json()
             for vm in (stopping, deleting)}
    assert shown[stopping["id"]]["status"] == "running"
    assert shown[stopping["id"]]["status_reason"] == f"stop failed: {GONE_7}: nothing was sent"
    assert shown[deleting["id"]]["status"] == "deleted"
