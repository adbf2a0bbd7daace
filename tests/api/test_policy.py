"""Authorisation in one place (issue 14): every route of the OpenAPI document has an entry of the
policy table, and the table decides, from the OpenAPI document alone, who is refused what."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI

from cloudland_api import policy
from cloudland_api.models import Role
from tests.api.conftest import Api


def operations(api: Api) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Every (method, path, x-policy) of the OpenAPI document."""
    for path, ops in api.app.openapi()["paths"].items():
        for method, operation in ops.items():
            yield method, path, operation["x-policy"]


def concrete(path: str) -> str:
    """The path with every parameter an id that exists nowhere (decisions come before any row is read)."""
    return re.sub(r"{[^}]+}", "12345", path)


def test_every_route_has_a_policy_entry(api: Api) -> None:
    assert policy.unpoliced(api.app.openapi()) == []
    used = {(p["resource"], p["action"]) for _, _, p in operations(api)}
    assert set(policy.POLICY) - used == set(), "entries no route uses"
    assert len(list(operations(api))) >= 40


def test_a_route_without_an_entry_is_caught() -> None:
    """What the test above finds when someone adds a route and forgets its policy entry."""
    router = APIRouter()

    @router.get("/things")
    def things() -> list[str]:
        return []

    @router.post("/things", **policy.allow("flavor", "read"))  # a reader could create things
    def make_thing() -> None:
        return None

    @router.delete("/things/{thing_id}", **policy.allow("flavor", "delete"))
    def delete_thing(thing_id: int) -> None:
        return None

    app = FastAPI()
    app.include_router(router)
    assert policy.unpoliced(app.openapi()) == [
        "GET /things: no x-policy (declare the route with **allow(resource, action))",
        "POST /things: changes something, yet a reader may do it",
    ]
    with pytest.raises(KeyError, match="no policy entry for .'thing', 'delete'."):
        policy.allow("thing", "delete")


def test_the_openapi_document_names_each_routes_required_role(api: Api) -> None:
    document = api.app.openapi()
    delete = document["paths"]["/api/v1/flavors/{flavor_id}"]["delete"]
    assert delete["x-required-role"] == ["admin"]
    assert delete["x-policy"] == {"resource": "flavor", "action": "delete", "scope": "organisation"}
    assert "admin in the organisation" in delete["responses"]["403"]["description"]
    create = document["paths"]["/api/v1/organisations"]["post"]
    assert (create["x-required-role"], create["x-policy"]["scope"]) == (["admin"], "cloud")
    login = document["paths"]["/api/v1/login"]["post"]
    assert (login["x-required-role"], login["x-policy"]["scope"]) == ([], "public")
    assert document["paths"]["/api/v1/instances"]["get"]["x-required-role"] == ["admin", "member", "reader"]


def _call(api: Api, method: str, path: str, headers: dict[str, str]) -> Any:
    return api.client.request(method, concrete(path), json={}, headers=headers)


def test_readers_read_but_change_nothing(api: Api) -> None:
    """A reader of the operator organisation is refused every change, whatever the id; reads are not
    refused, but those the table keeps for admins (the audit trail)."""
    reader = api.add_user("rita", "admin", Role.reader)
    changes = reads = 0
    for method, path, entry in operations(api):
        if entry["scope"] not in ("organisation", "project", "cloud"):
            continue
        reply = _call(api, method, path, reader)
        assert reply.status_code < 500, (method, path, reply.text)
        reading = method == "get" or (method, path) in policy.READING_POSTS
        if reading and Role.reader in policy.POLICY[(entry["resource"], entry["action"])].roles:
            assert reply.status_code != 403, (method, path, reply.text)
            reads += 1
        else:
            assert reply.status_code == 403, (method, path, reply.text)
            assert "role 'reader' may not" in reply.json()["error"]["message"]
            changes += 1
    assert changes >= 20 and reads >= 15


def test_members_are_refused_what_only_admins_do(api: Api) -> None:
    member = api.add_user("max", "admin", Role.member)
    refused = []
    for method, path, entry in operations(api):
        rule = policy.POLICY[(entry["resource"], entry["action"])]
        if rule.scope in policy.ROLE_SCOPES and Role.member not in rule.roles:
            reply = _call(api, method, path, member)
            assert reply.status_code == 403 and "needs admin" in reply.json()["error"]["message"], (path, reply.text)
            refused.append(f"{method} {path}")
    assert "delete /api/v1/flavors/{flavor_id}" in refused and "post /api/v1/users" in refused


def test_tenants_are_refused_every_cloud_route(api: Api) -> None:
    tenant = api.add_user("ann", "acme", Role.admin)
    cloud = [(m, p) for m, p, e in operations(api) if e["scope"] == "cloud"]
    assert {p for _, p in cloud} >= {"/api/v1/organisations", "/api/v1/hypervisors/{hypervisor_id}"}
    for method, path in cloud:
        reply = _call(api, method, path, tenant)
        assert reply.status_code == 403 and "operator organisation" in reply.json()["error"]["message"], path


def test_every_signed_in_user_manages_their_own_session(api: Api) -> None:
    reader = api.add_user("rita", "acme", Role.reader)
    me = api.client.get("/api/v1/me", headers=reader)
    assert me.status_code == 200 and (me.json()["role"], me.json()["organisation"]) == ("reader", "acme")
    assert api.client.post("/api/v1/logout", headers=reader).status_code == 204
