"""One list shape and one pagination scheme on every list route (issue 16).

Every ``GET /api/v1/<collection>`` answers ``{"items", "limit", "next_after"}`` (jobs add
``counts``), and ``next_after`` passed back as ``after`` gives the rest: nothing repeated,
nothing skipped, in the route's order, until it is null.
"""

from __future__ import annotations

import os

import pytest

from tests.api.conftest import Api, FlavorMaker, ImageMaker, Launcher, add_hypervisor
from tests.api.test_ssh_keys import crafted

API = "/api/v1"
ROUTES = ("flavors", "images", "ssh-keys", "instances", "jobs", "hypervisors", "vpcs", "subnets", "ports",
          "organisations", "users", "projects")
N = 5  # of each: pages of 2, 2 and 1


@pytest.fixture
def five_of_each(api: Api, admin_headers: dict[str, str], make_flavor: FlavorMaker, make_image: ImageMaker,
                 launch: Launcher) -> None:
    launch("a", count=3)  # also flavor "small" and image "img"
    launch("b", count=2)  # a second batch: jobs of two creation times
    for n in range(N - 1):
        make_flavor(f"f{n}")
        make_image(f"i{n}", upload=False)
    for n in range(N):
        reply = api.client.post(f"{API}/ssh-keys", json={"name": f"k{n}", "public_key": crafted(
            "ssh-ed25519", os.urandom(32))}, headers=admin_headers)
        assert reply.status_code == 201, reply.text
    for hypervisor_id in (3, 1, 4, 9, 5):
        add_hypervisor(api, hypervisor_id)
    # Tenant networks (issue 11) and tenants (issue 14): the admin's organisation and user are the fifth.
    vpcs = [post(api, admin_headers, "vpcs", {"name": f"v{n}"}) for n in range(N)]
    subnets = [post(api, admin_headers, "subnets", {"name": f"s{n}", "vpc": vpcs[0]["id"], "cidr": f"10.0.{n}.0/24"})
               for n in range(N)]
    for _ in range(N):
        post(api, admin_headers, "ports", {"subnet": subnets[0]["id"]})
    for n in range(N - 1):
        post(api, admin_headers, "organisations", {"name": f"o{n}", "admin": {"username": f"oa{n}",
                                                                              "password": "a-long-password"}})
        post(api, admin_headers, "users", {"username": f"u{n}", "password": "a-long-password", "role": "reader"})
        post(api, admin_headers, "projects", {"name": f"p{n}"})  # beside the default project


def post(api: Api, headers: dict[str, str], route: str, body: dict) -> dict:
    reply = api.client.post(f"{API}/{route}", json=body, headers=headers)
    assert reply.status_code == 201, (route, reply.text)
    created: dict = reply.json()
    return created


def walk(api: Api, headers: dict[str, str], route: str, limit: int) -> list[dict]:
    """Every page of ``route``, following ``next_after`` from the first page on."""
    pages: list[dict] = []
    after: str | None = None
    while True:
        reply = api.client.get(f"{API}/{route}", params={"limit": limit} | ({"after": after} if after else {}),
                               headers=headers)
        assert reply.status_code == 200, (route, reply.text)
        page = reply.json()
        pages.append(page)
        extra = {"counts"} if route == "jobs" else set()
        assert set(page) == {"items", "limit", "next_after"} | extra, (route, sorted(page))
        assert page["limit"] == limit and isinstance(page["next_after"], (str, type(None)))
        after = page["next_after"]
        if after is None:
            return pages
        assert len(pages) <= N, f"{route}: the walk does not end"


@pytest.mark.usefixtures("five_of_each")
@pytest.mark.parametrize("route", ROUTES)
def test_every_list_route_walks_by_cursor(api: Api, admin_headers: dict[str, str], route: str) -> None:
    whole = walk(api, admin_headers, route, 500)
    assert len(whole) == 1 and len(whole[0]["items"]) == N, route
    everything = [item["id"] for item in whole[0]["items"]]
    pages = walk(api, admin_headers, route, 2)
    assert [len(p["items"]) for p in pages] == [2, 2, 1], route
    walked = [item["id"] for page in pages for item in page["items"]]
    assert walked == everything, route  # same order, nothing repeated or skipped
    if route == "jobs":
        created = [item["created_at"] for item in whole[0]["items"]]
        assert created == sorted(created, reverse=True)  # newest first
    else:
        assert everything == sorted(everything)


def test_a_cursor_survives_changes_between_pages(api: Api, admin_headers: dict[str, str],
                                                make_flavor: FlavorMaker) -> None:
    """Keyset, not offset: deleting a row already seen does not make the walk skip one."""
    ids = [make_flavor(f"f{n}")["id"] for n in range(4)]
    first = api.client.get(f"{API}/flavors", params={"limit": 2}, headers=admin_headers).json()
    assert api.client.delete(f"{API}/flavors/{ids[0]}", headers=admin_headers).status_code == 204
    rest = api.client.get(f"{API}/flavors", params={"after": first["next_after"]}, headers=admin_headers).json()
    assert [f["id"] for f in rest["items"]] == ids[2:] and rest["next_after"] is None
