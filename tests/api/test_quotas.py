"""Quotas, enforced (issue 14 must-show 3), on SQLite and PostgreSQL: a concurrent burst never
exceeds a limit, whether instances or vCPUs across mixed flavors; the organisation's ceiling
holds across its projects; tenants see usage and limits, only operators set them."""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cloudland_api.models import Role
from tests.api.conftest import Api, FlavorMaker, ImageMaker, add_hypervisor

API = "/api/v1"
PROJECT = "X-CloudLand-Project"


def quota(api: Api, headers: dict[str, str]) -> dict[str, dict[str, Any]]:
    reply = api.client.get(f"{API}/quota", headers=headers)
    assert reply.status_code == 200, reply.text
    return {line["resource"]: line for line in reply.json()["items"]}


def set_project_quota(api: Api, headers: dict[str, str], project_id: int, **limits: int | None) -> dict[str, Any]:
    reply = api.client.put(f"{API}/projects/{project_id}/quota", json={"limits": limits}, headers=headers)
    assert reply.status_code == 200, reply.text
    answer: dict[str, Any] = reply.json()
    return answer


def default_project(api: Api, headers: dict[str, str]) -> int:
    found: int = api.client.get(f"{API}/quota", headers=headers).json()["project_id"]
    return found


def burst(api: Api, headers: dict[str, str], bodies: list[dict[str, Any]]) -> list[Any]:
    def create(body: dict[str, Any]) -> Any:
        return api.client.post(f"{API}/instances", json=body, headers=headers)

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(create, bodies))


def test_50_concurrent_creates_against_room_for_20_instances(api: Api, admin_headers: dict[str, str],
                                                            make_flavor: FlavorMaker, make_image: ImageMaker) -> None:
    make_flavor("small")
    make_image("img")
    set_project_quota(api, admin_headers, default_project(api, admin_headers), instances=20)
    replies = burst(api, admin_headers, [{"name": f"vm-{i}", "flavor": "small", "image": "img"} for i in range(50)])
    accepted = [r for r in replies if r.status_code == 202]
    refused = [r for r in replies if r.status_code != 202]
    assert len(accepted) == 20 and len(refused) == 30, sorted(r.status_code for r in replies)
    for reply in refused:
        assert reply.status_code == 409 and reply.json()["error"]["code"] == "quota_exceeded", reply.text
        assert "quota instances of project 'default' exceeded: limit 20, 20 used" in reply.json()["error"]["message"]
    line = quota(api, admin_headers)["instances"]
    assert (line["used"], line["limit"]) == (20, 20)
    assert len(api.client.get(f"{API}/instances?limit=100", headers=admin_headers).json()["items"]) == 20


def test_vcpus_across_mixed_flavors_never_exceed_the_limit(api: Api, admin_headers: dict[str, str],
                                                          make_flavor: FlavorMaker, make_image: ImageMaker) -> None:
    sizes = {"one": 1, "two": 2, "four": 4}
    for name, vcpus in sizes.items():
        make_flavor(name, vcpus=vcpus)
    make_image("img")
    set_project_quota(api, admin_headers, default_project(api, admin_headers), vcpus=40)
    flavors = list(itertools.islice(itertools.cycle(sizes), 50))  # 50 creates asking 117 vCPUs
    replies = burst(api, admin_headers, [{"name": f"vm-{i}", "flavor": f, "image": "img"}
                                         for i, f in enumerate(flavors)])
    granted = sum(sizes[f] for f, r in zip(flavors, replies) if r.status_code == 202)
    refusals = [r for r in replies if r.status_code != 202]
    assert refusals and all(r.status_code == 409 and "quota vcpus of project 'default' exceeded: limit 40"
                            in r.json()["error"]["message"] for r in refusals), [r.text for r in refusals][:3]
    # Never past the limit, and no room left that a refused create would have fitted in.
    assert 40 - 3 <= granted <= 40
    line = quota(api, admin_headers)["vcpus"]
    assert (line["used"], line["limit"]) == (granted, 40)
    more = api.client.post(f"{API}/instances", json={"name": "late", "flavor": "four", "image": "img"},
                           headers=admin_headers)
    assert more.status_code == 409 and f"{granted} used, 4 more asked" in more.json()["error"]["message"]


def test_the_organisation_ceiling_holds_across_its_projects(api: Api, admin_headers: dict[str, str],
                                                            make_flavor: FlavorMaker, make_image: ImageMaker) -> None:
    assert api.client.post(f"{API}/projects", json={"name": "dev"}, headers=admin_headers).status_code == 201
    org_id = api.client.get(f"{API}/me", headers=admin_headers).json()["org_id"]
    reply = api.client.put(f"{API}/organisations/{org_id}/quota", json={"limits": {"networks": 3}},
                           headers=admin_headers)
    assert reply.status_code == 200 and reply.json()["limits"]["networks"] == 3, reply.text
    dev = admin_headers | {PROJECT: "dev"}

    def vpc(name: str, headers: dict[str, str]) -> Any:
        return api.client.post(f"{API}/vpcs", json={"name": name}, headers=headers)

    assert [vpc(n, h).status_code for n, h in (("a", admin_headers), ("b", dev), ("c", dev))] == [201, 201, 201]
    refused = vpc("d", admin_headers)
    assert refused.status_code == 409 and "quota networks of organisation 'admin' exceeded: limit 3, 3 used" in \
        refused.json()["error"]["message"]
    lines = quota(api, dev)["networks"]
    assert (lines["used"], lines["limit"], lines["organisation_used"], lines["organisation_limit"]) == (2, None, 3, 3)
    # null: unlimited again.
    api.client.put(f"{API}/organisations/{org_id}/quota", json={"limits": {"networks": None}}, headers=admin_headers)
    assert vpc("d", admin_headers).status_code == 201


def test_volumes_and_their_gib_count(api: Api, admin_headers: dict[str, str]) -> None:
    add_hypervisor(api, 7)  # a local volume's home
    set_project_quota(api, admin_headers, default_project(api, admin_headers), volume_gib=10)
    first = api.client.post(f"{API}/volumes", json={"name": "a", "size_gib": 6}, headers=admin_headers)
    assert first.status_code == 202, first.text
    second = api.client.post(f"{API}/volumes", json={"name": "b", "size_gib": 6}, headers=admin_headers)
    assert second.status_code == 409 and "quota volume_gib" in second.json()["error"]["message"]
    lines = quota(api, admin_headers)
    assert (lines["volumes"]["used"], lines["volume_gib"]["used"]) == (1, 6)


def test_tenants_read_their_quota_and_only_operators_set_it(api: Api, admin_headers: dict[str, str]) -> None:
    tenant = api.add_user("ann", "acme", Role.admin)
    mine = api.client.get(f"{API}/quota", headers=tenant)
    assert mine.status_code == 200 and mine.json()["project"] == "default"
    assert {line["resource"] for line in mine.json()["items"]} >= {
        "instances", "vcpus", "memory_mib", "volumes", "volume_gib", "networks", "ports", "floating_ips",
        "security_groups"}
    project_id = mine.json()["project_id"]
    refused = api.client.put(f"{API}/projects/{project_id}/quota", json={"limits": {"instances": 100}}, headers=tenant)
    assert refused.status_code == 403 and "operator organisation" in refused.json()["error"]["message"]
    # The operator sets another organisation's project's limits; an unknown key is a 400 naming it.
    assert set_project_quota(api, admin_headers, project_id, instances=5)["project"] == "default"
    assert quota(api, tenant)["instances"]["limit"] == 5
    bad = api.client.put(f"{API}/projects/{project_id}/quota", json={"limits": {"gpus": 1}}, headers=admin_headers)
    assert bad.status_code == 400 and "not quota keys: gpus" in bad.json()["error"]["message"]
    negative = api.client.put(f"{API}/projects/{project_id}/quota", json={"limits": {"instances": -1}},
                              headers=admin_headers)
    assert negative.status_code == 422
