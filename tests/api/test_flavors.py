"""Flavors end to end: CRUD, pagination, roles and organisation isolation."""

from __future__ import annotations

from cloudland_api.models import Role
from tests.api.conftest import Api, FlavorMaker

FLAVORS = "/api/v1/flavors"


def test_create_get_list_delete(api: Api, admin_headers: dict[str, str], make_flavor: FlavorMaker) -> None:
    created = make_flavor("m1.small", vcpus=2, memory_mib=2048, disk_gib=20)
    assert {k: created[k] for k in ("name", "vcpus", "memory_mib", "disk_gib")} == {
        "name": "m1.small", "vcpus": 2, "memory_mib": 2048, "disk_gib": 20}
    url = f"{FLAVORS}/{created['id']}"
    assert api.client.get(url, headers=admin_headers).json() == created
    listing = api.client.get(FLAVORS, headers=admin_headers).json()
    assert listing["items"] == [created] and listing["next_after"] is None
    reply = api.client.delete(url, headers=admin_headers)
    assert reply.status_code == 204 and reply.content == b""
    assert api.client.get(url, headers=admin_headers).status_code == 404
    assert api.client.delete(url, headers=admin_headers).status_code == 404
    assert len(api.client.get(FLAVORS, headers=admin_headers).json()["items"]) == 0


def test_duplicate_name_is_409(api: Api, admin_headers: dict[str, str], make_flavor: FlavorMaker) -> None:
    make_flavor("dup")
    body = {"name": "dup", "vcpus": 1, "memory_mib": 64, "disk_gib": 0}
    reply = api.client.post(FLAVORS, json=body, headers=admin_headers)
    assert reply.status_code == 409
    assert reply.json()["error"]["code"] == "conflict" and "dup" in reply.json()["error"]["message"]



def test_reader_can_read_but_not_create_or_delete(api: Api, make_flavor: FlavorMaker) -> None:
    flavor = make_flavor("shared")
    reader = api.add_user("rita", "admin", Role.reader)
    assert api.client.get(f"{FLAVORS}/{flavor['id']}", headers=reader).status_code == 200
    reply = api.client.post(FLAVORS, json={"name": "x", "vcpus": 1, "memory_mib": 64, "disk_gib": 1}, headers=reader)
    assert reply.status_code == 403
    assert reply.json()["error"]["code"] == "forbidden" and "reader" in reply.json()["error"]["message"]
    assert api.client.delete(f"{FLAVORS}/{flavor['id']}", headers=reader).status_code == 403


def test_member_can_create_but_not_delete(api: Api, make_flavor: FlavorMaker) -> None:
    member = api.add_user("max", "admin", Role.member)
    flavor = make_flavor("mine", headers=member)
    assert api.client.delete(f"{FLAVORS}/{flavor['id']}", headers=member).status_code == 403


def test_organisations_are_isolated(api: Api, admin_headers: dict[str, str], make_flavor: FlavorMaker) -> None:
    flavor_a = make_flavor("same-name")
    org_b = api.add_user("bob", "org-b", Role.admin)
    url_a = f"{FLAVORS}/{flavor_a['id']}"
    # Not found, not forbidden: org B cannot even learn that the id exists.
    for method in ("get", "delete"):
        reply = api.client.request(method, url_a, headers=org_b)
        assert reply.status_code == 404, (method, reply.text)
        assert reply.json()["error"]["code"] == "not_found"
    assert api.client.get(FLAVORS, headers=org_b).json() == {"items": [], "limit": 50, "next_after": None}
    flavor_b = make_flavor("same-name", headers=org_b)  # names are unique per organisation only
    assert flavor_b["id"] != flavor_a["id"]
    assert api.client.get(url_a, headers=admin_headers).status_code == 200
    assert api.client.get(f"{FLAVORS}/{flavor_b['id']}", headers=admin_headers).status_code == 404
