"""The audit trail (issue 14): a scripted session's every step, the failed sign-in included, is
recorded with who, where, what, how it ended and when; an organisation's admins read their
organisation's, operators everyone's; nobody changes it through the API; no secret is in it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from cloudland_api.models import AuditEvent, Role
from tests.api.conftest import Api, Launcher, settle
from tests.identityfixtures import LOCAL_PASSWORD

AUDIT = "/api/v1/audit"


def events(api: Api, headers: dict[str, str], **params: Any) -> list[tuple[Any, ...]]:
    reply = api.client.get(AUDIT, headers=headers, params=params)
    assert reply.status_code == 200, reply.text
    return [(e["username"], e["method"], e["path"], e["status"]) for e in reversed(reply.json()["items"])]


def test_a_scripted_session_is_recorded_step_by_step(api: Api, admin_headers: dict[str, str]) -> None:
    reply = api.client.post("/api/v1/organisations", headers=admin_headers,
                            json={"name": "acme", "admin": {"username": "acme-admin", "password": LOCAL_PASSWORD}})
    acme = reply.json()["id"]
    login = {"username": "acme-admin", "organisation": "acme"}
    assert api.client.post("/api/v1/login", json={**login, "password": "not-the-password"}).status_code == 401
    token = api.client.post("/api/v1/login", json={**login, "password": LOCAL_PASSWORD}).json()["token"]
    acme_admin = {"Authorization": f"Bearer {token}"}
    flavor = api.client.post("/api/v1/flavors", headers=acme_admin,
                             json={"name": "small", "vcpus": 1, "memory_mib": 512, "disk_gib": 1})
    assert flavor.status_code == 201, flavor.text
    assert api.client.post("/api/v1/flavors", headers=acme_admin, json={"name": "bad"}).status_code == 422
    assert api.client.delete(f"/api/v1/flavors/{flavor.json()['id']}", headers=acme_admin).status_code == 204
    api.client.get("/api/v1/flavors", headers=acme_admin)  # reads are not recorded
    assert events(api, acme_admin) == [
        ("acme-admin", "POST", "/api/v1/login", 401),
        ("acme-admin", "POST", "/api/v1/login", 200),
        ("acme-admin", "POST", "/api/v1/flavors", 201),
        ("acme-admin", "POST", "/api/v1/flavors", 422),
        ("acme-admin", "DELETE", f"/api/v1/flavors/{flavor.json()['id']}", 204),
    ]
    newest = api.client.get(AUDIT, headers=acme_admin, params={"limit": 1}).json()
    assert newest["items"][0]["org_id"] == acme and newest["items"][0]["address"] == "testclient"
    assert newest["items"][0]["at"] and newest["next_after"]
    # The operator sees every organisation's, its own creation of acme among them.
    assert ("admin", "POST", "/api/v1/organisations", 201) in events(api, admin_headers, limit=500)
    assert events(api, admin_headers, username="acme-admin", limit=2)[-1][1:] == (
        "DELETE", f"/api/v1/flavors/{flavor.json()['id']}", 204)
    # No body is kept: no password anywhere in the trail.
    with api.app.state.sessions() as session:
        rows = repr([vars(e) for e in session.scalars(select(AuditEvent))])
    assert LOCAL_PASSWORD not in rows and "not-the-password" not in rows and token not in rows


def test_only_admins_read_it_only_their_organisations_and_nobody_changes_it(api: Api,
                                                                            admin_headers: dict[str, str]) -> None:
    api.client.post("/api/v1/organisations", headers=admin_headers,
                    json={"name": "acme", "admin": {"username": "acme-admin", "password": LOCAL_PASSWORD}})
    beta = api.add_user("beta-admin", "beta", role=Role.admin)
    member = api.add_user("acme-member", "acme", role=Role.member)
    assert api.client.get(AUDIT, headers=member).status_code == 403
    assert all(e[0] != "acme-admin" for e in events(api, beta))  # beta's admin sees none of acme's
    for method in ("put", "patch", "delete", "post"):
        assert api.client.request(method, AUDIT, headers=admin_headers).status_code == 405
    assert api.client.delete(f"{AUDIT}/1", headers=admin_headers).status_code == 404


def test_a_nul_in_the_path_is_recorded_not_lost(api: Api, admin_headers: dict[str, str]) -> None:
    """PostgreSQL refuses NUL in text: the trail keeps the path as sent (``%00``), so the row is
    written on both databases (it was lost, and logged)."""
    status = api.client.delete("/api/v1/flavors/%00", headers=admin_headers).status_code
    assert status in (400, 404, 422)
    assert events(api, admin_headers, limit=500)[-1] == ("admin", "DELETE", "/api/v1/flavors/%00", status)


def test_a_change_commits_with_its_row_so_a_crash_after_it_loses_no_record(
        api: Api, admin_headers: dict[str, str], monkeypatch: Any) -> None:
    """The row is written in the change's own transaction, with the status the route answers on
    success: with the write after the answer made to fail (as a process dying there would), the
    change still has its row, 201; a request refused for its token or its role has its row,
    written before its answer."""
    from cloudland_api import audit

    async def dies(*_args: Any) -> None:
        raise RuntimeError("the API process died after answering")

    monkeypatch.setattr(audit.AuditTrail, "_record", dies)
    made = api.client.post("/api/v1/flavors", headers=admin_headers,
                           json={"name": "tiny", "vcpus": 1, "memory_mib": 64, "disk_gib": 1})
    assert made.status_code == 201, made.text
    reader = api.add_user("rita", "admin", Role.reader)
    assert api.client.delete(f"/api/v1/flavors/{made.json()['id']}", headers=reader).status_code == 403
    assert api.client.delete(f"/api/v1/flavors/{made.json()['id']}",
                             headers={"Authorization": "Bearer nonsense"}).status_code == 401
    monkeypatch.undo()
    rows = [(u, m, p, s) for u, m, p, s in events(api, admin_headers, limit=500) if p.startswith("/api/v1/flavors")]
    assert rows == [("admin", "POST", "/api/v1/flavors", 201),
                    ("rita", "DELETE", f"/api/v1/flavors/{made.json()['id']}", 403),
                    (None, "DELETE", f"/api/v1/flavors/{made.json()['id']}", 401)]


def test_rows_name_the_project_and_the_resource_and_are_queried_by_them(api: Api,
                                                                        admin_headers: dict[str, str]) -> None:
    dev = api.client.post("/api/v1/projects", json={"name": "dev"}, headers=admin_headers).json()
    in_dev = admin_headers | {"X-CloudLand-Project": "dev"}
    api.client.post("/api/v1/vpcs", json={"name": "w"}, headers=admin_headers)
    # (before the delete: SQLite would give a VPC made after it the deleted one's id)
    vpc = api.client.post("/api/v1/vpcs", json={"name": "v"}, headers=in_dev).json()
    assert api.client.delete(f"/api/v1/vpcs/{vpc['id']}", headers=in_dev).status_code == 204
    rows = api.client.get(AUDIT, headers=admin_headers, params={"project": dev["id"]}).json()["items"]
    assert [(e["method"], e["resource_type"], e["resource_id"], e["project_id"]) for e in reversed(rows)] == [
        ("POST", "vpc", str(vpc["id"]), dev["id"]), ("DELETE", "vpc", str(vpc["id"]), dev["id"])]
    one = api.client.get(AUDIT, headers=admin_headers, params={"resource": f"vpc:{vpc['id']}"}).json()["items"]
    assert [(e["method"], e["path"]) for e in reversed(one)] == [("POST", "/api/v1/vpcs"),
                                                                 ("DELETE", f"/api/v1/vpcs/{vpc['id']}")]
    kinds = api.client.get(AUDIT, headers=admin_headers, params={"resource": "vpc"}).json()["items"]
    assert len(kinds) == 3
    assert {e["resource_type"] for e in api.client.get(AUDIT, headers=admin_headers, params={
        "resource": "project"}).json()["items"]} == {"project"}
    bad = api.client.get(AUDIT, headers=admin_headers, params={"resource": "vpc:a b"})
    assert bad.status_code == 422


def life(api: Api, headers: dict[str, str], resource: str) -> list[tuple[str, str, int]]:
    items = api.client.get(AUDIT, headers=headers, params={"resource": resource}).json()["items"]
    return [(e["method"], e["path"], e["status"]) for e in reversed(items)]


def test_a_create_names_what_it_made_so_a_resource_has_its_whole_life(
        api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    """A create's row carries the id of the row it inserted, in the same transaction; a batch
    writes one row per instance; a refused create (nothing made) names none."""
    [web] = launch("web")["instances"]
    settle(api, web["job_id"])
    stop = api.client.post(f"/api/v1/instances/{web['id']}/stop", headers=admin_headers)
    assert stop.status_code == 202, stop.text
    settle(api, stop.json()["id"])
    assert api.client.delete(f"/api/v1/instances/{web['id']}", headers=admin_headers).status_code == 202
    assert life(api, admin_headers, f"instance:{web['id']}") == [
        ("POST", "/api/v1/instances", 202), ("POST", f"/api/v1/instances/{web['id']}/stop", 202),
        ("DELETE", f"/api/v1/instances/{web['id']}", 202)]
    batch = launch("db", count=3)["instances"]
    for instance in batch:
        assert life(api, admin_headers, f"instance:{instance['id']}") == [("POST", "/api/v1/instances", 202)]
    # Another type's create: the id of its own table's row, not of the rows made beside it.
    group = api.client.post("/api/v1/security-groups", json={"name": "g"}, headers=admin_headers).json()
    assert life(api, admin_headers, f"security_group:{group['id']}") == [("POST", "/api/v1/security-groups", 201)]
    taken = api.client.post("/api/v1/instances", headers=admin_headers,
                            json={"name": "web-x", "flavor": "small", "image": "nope"})
    assert taken.status_code == 404
    refused = [e for e in api.client.get(AUDIT, headers=admin_headers, params={"resource": "instance"}).json()["items"]
               if e["status"] == 404]
    assert [e["resource_id"] for e in refused] == [None]
    with api.app.state.sessions() as session:
        rows = session.scalars(select(AuditEvent).where(AuditEvent.resource_type == "instance",
                                                        AuditEvent.method == "POST",
                                                        AuditEvent.path == "/api/v1/instances")).all()
    assert sorted(int(r.resource_id) for r in rows if r.resource_id) == sorted(
        [web["id"], *(i["id"] for i in batch)])
