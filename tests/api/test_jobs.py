"""Jobs: listing newest first with filters and per-state counts, lookup, tenancy, and waiting."""

from __future__ import annotations

import threading
import time

from cloudland_api.models import Job, Role
from tests.api.conftest import Api, Launcher, settle

JOBS = "/api/v1/jobs"


def listing(api: Api, headers: dict[str, str], **params: object) -> dict:
    reply = api.client.get(JOBS, params=params, headers=headers)
    assert reply.status_code == 200, reply.text
    body: dict = reply.json()
    return body


def test_newest_first_with_filters_and_counts(api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    first = launch("a", count=3)
    second = launch("b")
    settle(api, first["jobs"][0]["id"], "failed", "hypervisor 1: no disk")
    settle(api, first["jobs"][1]["id"])
    everything = listing(api, admin_headers)
    assert everything["counts"] is None and (everything["limit"], everything["next_after"]) == (50, None)
    items = everything["items"]
    assert len(items) == 4 and items[0]["id"] == second["jobs"][0]["id"]
    assert [j["created_at"] for j in items] == sorted((j["created_at"] for j in items), reverse=True)

    batch = listing(api, admin_headers, batch=first["batch"])
    assert {j["id"] for j in batch["items"]} == {j["id"] for j in first["jobs"]}
    assert batch["counts"] == {"pending": 1, "dispatched": 0, "succeeded": 1, "failed": 1, "timeout": 0}
    # counts cover the whole batch, whatever the other filters and the page.
    page = listing(api, admin_headers, batch=first["batch"], state="pending", limit=1)
    assert [j["id"] for j in page["items"]] == [first["jobs"][2]["id"]] and page["counts"] == batch["counts"]

    [failed] = listing(api, admin_headers, state="failed")["items"]
    assert (failed["id"], failed["reason"]) == (first["jobs"][0]["id"], "hypervisor 1: no disk")
    assert failed["finished_at"] is not None
    assert {j["id"] for j in listing(api, admin_headers, state="pending")["items"]} == {
        first["jobs"][2]["id"], second["jobs"][0]["id"]}
    only = listing(api, admin_headers, instance=second["instances"][0]["id"])["items"]
    assert [j["id"] for j in only] == [second["jobs"][0]["id"]]
    first_page = listing(api, admin_headers, limit=3)
    rest = listing(api, admin_headers, limit=3, after=first_page["next_after"])
    assert [j["id"] for j in first_page["items"] + rest["items"]] == [j["id"] for j in items]
    assert rest["next_after"] is None
    assert listing(api, admin_headers, batch="0" * 32) == {"items": [], "limit": 50, "next_after": None, "counts": {
        "pending": 0, "dispatched": 0, "succeeded": 0, "failed": 0, "timeout": 0}}


def test_bad_filters_are_422(api: Api, admin_headers: dict[str, str]) -> None:
    for params in ({"state": "done"}, {"batch": "not-hex"}, {"batch": "reconcile-"}, {"batch": "a" * 33},
                   {"batch": "recover-abc"}, {"instance": 0},
                   {"limit": 0}, {"limit": 501}, {"after": "a b"}, {"after": "x" * 257}):
        reply = api.client.get(JOBS, params=params, headers=admin_headers)
        assert reply.status_code == 422, (params, reply.text)


def test_get_one_and_404s(api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    [job] = launch("vm")["jobs"]
    reply = api.client.get(f"{JOBS}/{job['id']}", headers=admin_headers)
    assert reply.status_code == 200 and reply.json() == job
    unknown = api.client.get(f"{JOBS}/{'f' * 32}", headers=admin_headers)
    assert unknown.status_code == 404 and f"job {'f' * 32} not found" in unknown.json()["error"]["message"]
    bob = api.add_user("bob", "org-b", Role.admin)
    reply = api.client.get(f"{JOBS}/{job['id']}", headers=bob)
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "not_found"
    assert listing(api, bob)["items"] == [] and listing(api, bob, batch=job["batch"])["counts"]["pending"] == 0
    for malformed in ("xyz", "ABCDEF", "0" * 33, "1-2"):
        assert api.client.get(f"{JOBS}/{malformed}", headers=admin_headers).status_code == 422, malformed


def test_wait_on_a_pending_job_gives_up_after_wait(api: Api, admin_headers: dict[str, str],
                                                    launch: Launcher) -> None:
    [job] = launch("vm")["jobs"]
    started = time.monotonic()
    reply = api.client.get(f"{JOBS}/{job['id']}", params={"wait": 0.5}, headers=admin_headers)
    elapsed = time.monotonic() - started
    assert reply.status_code == 200 and reply.json()["state"] == "pending"
    assert 0.5 <= elapsed < 3, elapsed


def test_wait_returns_as_soon_as_the_job_ends(api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    [job] = launch("vm")["jobs"]
    errors: list[BaseException] = []

    def settle_later() -> None:
        time.sleep(0.3)
        try:
            settle(api, job["id"])
        except BaseException as error:  # noqa: BLE001 - reported by the test thread below
            errors.append(error)

    worker = threading.Thread(target=settle_later)
    started = time.monotonic()
    worker.start()
    try:
        reply = api.client.get(f"{JOBS}/{job['id']}", params={"wait": 5}, headers=admin_headers)
    finally:
        worker.join()
    elapsed = time.monotonic() - started
    assert errors == []
    assert reply.status_code == 200 and reply.json()["state"] == "succeeded", reply.text
    assert reply.json()["finished_at"] is not None
    assert 0.3 <= elapsed < 2.5, elapsed


def test_wait_on_a_finished_job_answers_at_once(api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    [job] = launch("vm")["jobs"]
    reason = "timeout: hypervisor 2 did not answer within 120 s"
    settle(api, job["id"], "timeout", reason)
    started = time.monotonic()
    reply = api.client.get(f"{JOBS}/{job['id']}", params={"wait": 30}, headers=admin_headers)
    assert time.monotonic() - started < 2
    assert (reply.json()["state"], reply.json()["reason"]) == ("timeout", reason)


def test_wait_bounds_are_422(api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    [job] = launch("vm")["jobs"]
    for wait in ("60.5", "61", "-1", "soon"):
        reply = api.client.get(f"{JOBS}/{job['id']}", params={"wait": wait}, headers=admin_headers)
        assert reply.status_code == 422 and "wait" in reply.json()["error"]["message"], (wait, reply.text)


def test_the_reconcilers_batches_are_listed_by_their_name(api: Api, admin_headers: dict[str, str],
                                                         launch: Launcher) -> None:
    """Jobs the reconciler made carry a ``reconcile-<hex>`` batch, and can be listed by it."""
    [job] = launch("healed")["jobs"]
    with api.app.state.write_sessions() as session:
        row = session.get(Job, job["id"])
        assert row is not None
        row.batch = "reconcile-0123456789ab"
        session.commit()
    listed = listing(api, admin_headers, batch="reconcile-0123456789ab")
    assert [j["id"] for j in listed["items"]] == [job["id"]] and listed["counts"]["pending"] == 1
