"""Managing tenants (issue 14): operators create and delete organisations; an organisation's admins
manage its users, memberships and roles. Each operation and each refusal, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import select

from cloudland.errors import Conflict
from cloudland_api.models import Membership, Role
from cloudland_api.services import tenants
from cloudland_api.services.identity import Caller, caller_for
from tests.api.conftest import Api, ImageMaker, settle

ORGS = "/api/v1/organisations"
USERS = "/api/v1/users"
MEMBERSHIPS = "/api/v1/memberships"
FLAVORS = "/api/v1/flavors"
PW = "correct-horse"


def login(api: Api, username: str, password: str = PW, organisation: str | None = None) -> Any:
    body = {"username": username, "password": password} | ({"organisation": organisation} if organisation else {})
    return api.client.post("/api/v1/login", json=body)


def headers(api: Api, username: str, password: str = PW, organisation: str | None = None) -> dict[str, str]:
    reply = login(api, username, password, organisation)
    assert reply.status_code == 200, reply.text
    return {"Authorization": f"Bearer {reply.json()['token']}"}


def new_org(api: Api, operator: dict[str, str], name: str = "acme", admin: str = "alice") -> dict[str, str]:
    """Organisation ``name`` with a new admin ``admin``; returns the admin's headers."""
    reply = api.client.post(ORGS, json={"name": name, "admin": {"username": admin, "password": PW}}, headers=operator)
    assert reply.status_code == 201, reply.text
    assert reply.json()["name"] == name and reply.json()["operator"] is False
    return headers(api, admin, organisation=name)


def new_user(api: Api, admin: dict[str, str], username: str, role: str = "member") -> dict[str, Any]:
    reply = api.client.post(USERS, json={"username": username, "password": PW, "role": role}, headers=admin)
    assert reply.status_code == 201, reply.text
    return dict(reply.json())


def error(reply: Any, status: int) -> str:
    assert reply.status_code == status, reply.text
    message: str = reply.json()["error"]["message"]
    return message


def test_an_operator_creates_an_organisation_whose_admin_manages_its_users(api: Api,
                                                                           admin_headers: dict[str, str]) -> None:
    alice = new_org(api, admin_headers)
    bob = new_user(api, alice, "bob")
    assert (bob["username"], bob["role"]) == ("bob", "member")
    assert api.client.post(FLAVORS, json={"name": "small", "vcpus": 1, "memory_mib": 64, "disk_gib": 1},
                           headers=headers(api, "bob")).status_code == 201
    listing = api.client.get(USERS, headers=alice).json()
    assert [(u["username"], u["role"]) for u in listing["items"]] == [("alice", "admin"), ("bob", "member")]
    assert listing["next_after"] is None
    page = api.client.get(USERS, params={"limit": 1}, headers=alice).json()
    rest = api.client.get(USERS, params={"limit": 1, "after": page["next_after"]}, headers=alice).json()
    assert [u["username"] for u in page["items"] + rest["items"]] == ["alice", "bob"]
    assert api.client.get(USERS, params={"username": "bob"}, headers=alice).json()["items"] == [bob]
    assert api.client.get(f"{USERS}/{bob['id']}", headers=alice).json() == bob
    orgs = api.client.get(ORGS, headers=admin_headers).json()["items"]
    assert [(o["name"], o["operator"]) for o in orgs] == [("admin", True), ("acme", False)]


def test_organisation_refusals(api: Api, admin_headers: dict[str, str]) -> None:
    new_org(api, admin_headers)
    body = {"name": "acme", "admin": {"username": "zed", "password": PW}}
    assert "organisation name 'acme' is already used" in error(api.client.post(ORGS, json=body, headers=admin_headers),
                                                               409)
    body = {"name": "beta", "admin": {"username": "alice", "password": PW}}
    assert "username 'alice' is already taken" in error(api.client.post(ORGS, json=body, headers=admin_headers), 409)
    body = {"name": "beta", "admin": {"username": "nobody"}}
    assert "user 'nobody' not found" in error(api.client.post(ORGS, json=body, headers=admin_headers), 404)
    for bad in ({"name": "beta"}, {"name": "bad name", "admin": {"username": "x", "password": PW}},
                {"name": "beta", "admin": {"username": "x", "password": "short"}},
                {"name": "beta", "admin": {"username": "-x", "password": PW}}):
        assert api.client.post(ORGS, json=bad, headers=admin_headers).status_code == 422, bad
    assert "organisation 999 not found" in error(api.client.delete(f"{ORGS}/999", headers=admin_headers), 404)
    assert "operator organisation: it cannot be deleted" in error(api.client.delete(f"{ORGS}/1", headers=admin_headers),
                                                                  409)
    # Only operators: an organisation's own admin may not create or delete organisations.
    alice = headers(api, "alice")
    for reply in (api.client.post(ORGS, json=body, headers=alice), api.client.get(ORGS, headers=alice)):
        assert "managed by the operator organisation" in error(reply, 403)


def test_an_existing_user_can_be_a_new_organisations_admin(api: Api, admin_headers: dict[str, str]) -> None:
    body = {"name": "lab", "admin": {"username": "admin"}}
    assert api.client.post(ORGS, json=body, headers=admin_headers).status_code == 201
    lab = headers(api, "admin", api.admin.password, organisation="lab")
    me = api.client.get("/api/v1/me", headers=lab).json()
    assert (me["organisation"], me["role"], me["operator"]) == ("lab", "admin", False)


def test_deleting_an_organisation_needs_it_empty_and_takes_its_own_users(
        api: Api, admin_headers: dict[str, str], make_image: ImageMaker) -> None:
    alice = new_org(api, admin_headers)
    new_user(api, alice, "bob")
    carol = new_user(api, alice, "carol")
    new_org(api, admin_headers, "beta", "bea")
    # carol is also in beta: she stays when acme goes.
    assert api.client.post(MEMBERSHIPS, json={"username": "carol"}, headers=headers(api, "bea")).status_code == 201
    image = make_image("img", headers=alice)
    org_id = next(o["id"] for o in api.client.get(ORGS, headers=admin_headers).json()["items"] if o["name"] == "acme")
    message = error(api.client.delete(f"{ORGS}/{org_id}", headers=admin_headers), 409)
    assert message == ("organisation 'acme' still has 1 image: its instances and images must be deleted and its "
                       "jobs ended first")
    assert api.client.delete(f"/api/v1/images/{image['id']}", headers=alice).status_code == 204
    # The image's eviction is a job (no tree here: it stays pending until it is settled).
    message = error(api.client.delete(f"{ORGS}/{org_id}", headers=admin_headers), 409)
    assert message.startswith("organisation 'acme' still has 1 unfinished job: ")
    [evict] = api.client.get("/api/v1/jobs", headers=alice).json()["items"]
    settle(api, evict["id"])
    assert api.client.delete(f"{ORGS}/{org_id}", headers=admin_headers).status_code == 204
    assert [o["name"] for o in api.client.get(ORGS, headers=admin_headers).json()["items"]] == ["admin", "beta"]
    for gone in ("alice", "bob"):
        assert error(login(api, gone), 401) == "invalid username or password"
    assert error(api.client.get(FLAVORS, headers=alice), 401) == "token's user or membership no longer exists"
    assert api.client.get("/api/v1/me", headers=headers(api, "carol")).json()["user_id"] == carol["id"]


def test_users_refusals(api: Api, admin_headers: dict[str, str]) -> None:
    alice = new_org(api, admin_headers)
    bob = new_user(api, alice, "bob")
    assert "username 'bob' is already taken" in error(
        api.client.post(USERS, json={"username": "bob", "password": PW}, headers=alice), 409)
    assert "username 'admin' is already taken" in error(
        api.client.post(USERS, json={"username": "admin", "password": PW}, headers=alice), 409)
    for bad in ({"username": "x", "password": "short"}, {"username": "x", "password": PW, "role": "owner"},
                {"username": "a b", "password": PW}, {"username": "x", "password": PW, "colour": "red"}):
        assert api.client.post(USERS, json=bad, headers=alice).status_code == 422, bad
    # Another organisation's users are not found, never forbidden: ids cannot be probed.
    other = new_org(api, admin_headers, "beta", "bea")
    for method in ("get", "delete"):
        assert error(api.client.request(method, f"{USERS}/{bob['id']}", headers=other), 404) == (
            f"user {bob['id']} not found in this organisation")
    assert api.client.patch(f"{MEMBERSHIPS}/{bob['id']}", json={"role": "admin"}, headers=other).status_code == 404
    # Members read the organisation's users but may not manage them.
    member = headers(api, "bob")
    assert api.client.get(USERS, headers=member).status_code == 200
    message = error(api.client.post(USERS, json={"username": "eve", "password": PW}, headers=member), 403)
    assert message == "role 'member' may not create users; needs admin in the organisation"


def test_an_organisation_keeps_an_admin(api: Api, admin_headers: dict[str, str]) -> None:
    alice = new_org(api, admin_headers)
    me = api.client.get("/api/v1/me", headers=alice).json()["user_id"]
    message = error(api.client.patch(f"{MEMBERSHIPS}/{me}", json={"role": "member"}, headers=alice), 409)
    assert message == "'alice' is the organisation's last admin: make another user admin before making them member"
    assert "last admin" in error(api.client.delete(f"{USERS}/{me}", headers=alice), 409)
    bob = new_user(api, alice, "bob", "admin")
    assert api.client.patch(f"{MEMBERSHIPS}/{me}", json={"role": "reader"}, headers=alice).json()["role"] == "reader"
    # The role counts from the next request on: alice now only reads.
    assert error(api.client.post(USERS, json={"username": "x", "password": PW}, headers=alice), 403).startswith(
        "role 'reader' may not")
    bob_headers = headers(api, "bob")
    assert api.client.patch(f"{MEMBERSHIPS}/{me}", json={"role": "admin"}, headers=bob_headers).status_code == 200
    assert api.client.delete(f"{USERS}/{bob['id']}", headers=alice).status_code == 204
    assert error(login(api, "bob"), 401) == "invalid username or password"


def test_memberships_add_change_and_remove(api: Api, admin_headers: dict[str, str]) -> None:
    alice = new_org(api, admin_headers)
    bea = new_org(api, admin_headers, "beta", "bea")
    bob = new_user(api, alice, "bob")
    joined = api.client.post(MEMBERSHIPS, json={"username": "bob", "role": "reader"}, headers=bea)
    assert joined.status_code == 201 and joined.json() == bob | {"role": "reader"}
    assert "already a member" in error(api.client.post(MEMBERSHIPS, json={"username": "bob"}, headers=bea), 409)
    assert "user 'nobody' not found" in error(api.client.post(MEMBERSHIPS, json={"username": "nobody"}, headers=bea),
                                              404)
    # bob is in two organisations now: acme may not delete him, only remove him.
    message = error(api.client.delete(f"{USERS}/{bob['id']}", headers=alice), 409)
    assert message.startswith("user 'bob' is also a member of beta: remove their membership here instead")
    in_acme, in_beta = headers(api, "bob", organisation="acme"), headers(api, "bob", organisation="beta")
    assert api.client.delete(f"{MEMBERSHIPS}/{bob['id']}", headers=bea).status_code == 204
    # A removed membership ends every token bob holds, in every organisation.
    assert "the password changed or a membership was removed" in error(api.client.get(FLAVORS, headers=in_acme), 401)
    assert error(api.client.get(FLAVORS, headers=in_beta), 401) == "token's user or membership no longer exists"
    assert error(login(api, "bob", organisation="beta"), 401) == "user is not a member of 'beta'"
    assert api.client.get(FLAVORS, headers=headers(api, "bob")).status_code == 200
    # acme is bob's only organisation now: removing him from it would strand him.
    message = error(api.client.delete(f"{MEMBERSHIPS}/{bob['id']}", headers=alice), 409)
    assert message == "this organisation is 'bob''s only one: delete the user instead"
    assert api.client.patch(f"{MEMBERSHIPS}/{bob['id']}", json={"role": "owner"}, headers=alice).status_code == 422


def test_the_bootstrap_admin_is_an_operator(api: Api, admin_headers: dict[str, str]) -> None:
    me = api.client.get("/api/v1/me", headers=admin_headers).json()
    assert (me["username"], me["organisation"], me["role"], me["operator"]) == ("admin", "admin", "admin", True)
    reader = api.add_user("rita", "admin", Role.reader)
    assert api.client.get(ORGS, headers=reader).status_code == 200


def test_two_admins_demoting_each_other_at_once_leave_one_admin(api: Api, admin_headers: dict[str, str]) -> None:
    """The organisation's row is locked for every membership change: one demotion wins, the other
    then finds the last admin (PostgreSQL runs both at once; SQLite's writers take turns)."""
    alice = new_org(api, admin_headers)
    me = api.client.get("/api/v1/me", headers=alice).json()
    bob = new_user(api, alice, "bob", "admin")
    with api.app.state.sessions() as session:
        callers = [caller_for(session, me["user_id"], me["org_id"]), caller_for(session, bob["id"], me["org_id"])]
    targets = [bob["id"], me["user_id"]]
    start = threading.Barrier(2)
    outcomes: list[str] = []

    def demote(caller: Caller, target: int) -> None:
        with api.app.state.write_sessions() as session:
            start.wait()
            try:
                tenants.change_role(session, caller, target, "member")
                outcomes.append("demoted")
            except Conflict as exc:
                outcomes.append(str(exc))

    threads = [threading.Thread(target=demote, args=pair) for pair in zip(callers, targets, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(outcomes) == 2 and outcomes.count("demoted") == 1, outcomes
    assert any("is the organisation's last admin" in outcome for outcome in outcomes), outcomes
    with api.app.state.sessions() as session:
        members = session.scalars(select(Membership).where(Membership.org_id == me["org_id"]))
        roles = sorted(m.role.value for m in members)
    assert roles == ["admin", "member"]
