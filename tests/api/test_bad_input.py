"""Bad input is a 4xx that names the problem, never a 500: a table, then every route."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator

import pytest
from fastapi.routing import APIRoute
from starlette.routing import Route

from tests.api.conftest import Api, FlavorMaker

FLAVORS = "/api/v1/flavors"
INSTANCES = "/api/v1/instances"
JOBS = "/api/v1/jobs"
GOOD = {"name": "ok", "vcpus": 1, "memory_mib": 512, "disk_gib": 1}


def without(field: str) -> dict:
    return {k: v for k, v in GOOD.items() if k != field}


# (method, path, raw body or json body, status, words the message must contain)
CASES = [
    ("post", FLAVORS, b'{"name": "x", "vcpus": ', 400, ["not valid JSON"]),
    ("post", FLAVORS, b"not json at all", 400, ["not valid JSON"]),
    ("post", FLAVORS, b"", 422, ["body", "required"]),
    ("post", FLAVORS, [1, 2], 422, ["body"]),
    ("post", FLAVORS, "a string", 422, ["body"]),
    ("post", FLAVORS, without("vcpus"), 422, ["vcpus", "required"]),
    ("post", FLAVORS, without("name"), 422, ["name", "required"]),
    ("post", FLAVORS, {}, 422, ["name", "vcpus", "memory_mib", "disk_gib"]),
    ("post", FLAVORS, GOOD | {"vcpus": -1}, 422, ["vcpus", "greater than or equal to 1"]),
    ("post", FLAVORS, GOOD | {"vcpus": 0}, 422, ["vcpus"]),
    ("post", FLAVORS, GOOD | {"vcpus": 10**30}, 422, ["vcpus", "less than or equal"]),
    ("post", FLAVORS, GOOD | {"memory_mib": 2**63}, 422, ["memory_mib"]),
    ("post", FLAVORS, GOOD | {"disk_gib": -5}, 422, ["disk_gib"]),
    ("post", FLAVORS, GOOD | {"vcpus": "two"}, 422, ["vcpus", "integer"]),
    ("post", FLAVORS, GOOD | {"vcpus": "2"}, 422, ["vcpus", "integer"]),
    ("post", FLAVORS, GOOD | {"vcpus": 1.5}, 422, ["vcpus"]),
    ("post", FLAVORS, GOOD | {"vcpus": True}, 422, ["vcpus"]),
    ("post", FLAVORS, GOOD | {"vcpus": None}, 422, ["vcpus"]),
    ("post", FLAVORS, GOOD | {"name": 7}, 422, ["name", "string"]),
    ("post", FLAVORS, GOOD | {"name": ""}, 422, ["name"]),
    ("post", FLAVORS, GOOD | {"name": "x" * 65}, 422, ["name"]),
    ("post", FLAVORS, GOOD | {"name": "bad name/../"}, 422, ["name", "pattern"]),
    ("post", FLAVORS, GOOD | {"name": "\x00"}, 422, ["name"]),
    ("post", FLAVORS, GOOD | {"colour": "red"}, 422, ["colour", "not permitted"]),
    ("get", f"{FLAVORS}/999999", None, 404, ["flavor 999999 not found"]),
    ("delete", f"{FLAVORS}/999999", None, 404, ["flavor 999999 not found"]),
    ("get", f"{FLAVORS}/abc", None, 422, ["flavor_id (path)", "integer"]),
    ("get", f"{FLAVORS}/1.5", None, 422, ["flavor_id (path)"]),
    ("get", f"{FLAVORS}/0", None, 422, ["flavor_id (path)"]),
    ("get", f"{FLAVORS}/-3", None, 422, ["flavor_id (path)"]),
    ("get", f"{FLAVORS}/{2**64}", None, 422, ["flavor_id (path)"]),
    ("delete", f"{FLAVORS}/abc", None, 422, ["flavor_id (path)"]),
    ("get", f"{FLAVORS}?limit=0", None, 422, ["limit (query)"]),
    ("get", f"{FLAVORS}?limit=10000", None, 422, ["limit (query)"]),
    ("get", f"{FLAVORS}?limit=ten", None, 422, ["limit (query)"]),
    ("get", f"{FLAVORS}?after=a+b", None, 422, ["after (query)"]),
    ("get", f"{FLAVORS}?after={'x' * 300}", None, 422, ["after (query)"]),
    ("get", f"{FLAVORS}?after=bm90LWEtY3Vyc29y", None, 400, ["after:", "not a cursor"]),
    ("get", f"{JOBS}?after=WzFd", None, 400, ["after:", "not a cursor"]),
    ("put", FLAVORS, None, 405, ["Method Not Allowed"]),
    ("get", "/api/v1/nothing-here", None, 404, ["Not Found"]),
    ("post", INSTANCES, b'{"name": "web", "count": ', 400, ["not valid JSON"]),
    ("post", INSTANCES, {"name": "web", "flavor": "nope", "image": "nope"}, 404, ["flavor 'nope' not found"]),
    ("post", INSTANCES, {"name": "web", "flavor": 1, "image": 1, "count": -1}, 422, ["count"]),
    ("post", INSTANCES, {"name": "web", "flavor": 1, "image": 1, "count": 0}, 422, ["count"]),
    ("post", INSTANCES, {"name": "web", "flavor": 1, "image": 1, "count": 10**9}, 422, ["count", "less than"]),
    ("post", INSTANCES, {"name": "web", "flavor": 1, "image": 1, "count": "5"}, 422, ["count"]),
    ("post", INSTANCES, {"name": "web", "flavor": 1}, 422, ["exactly one of image and boot_volume"]),
    ("post", INSTANCES, {"name": "web", "flavor": 1, "image": 1, "boot_volume": 1}, 422,
     ["exactly one of image and boot_volume"]),
    ("post", INSTANCES, {"name": "web", "flavor": 1, "boot_volume": 1, "count": 2}, 422,
     ["count must be 1 with boot_volume"]),
    ("post", INSTANCES, {"name": "web", "flavor": 1, "image": 1, "delete_on_termination": True}, 422,
     ["delete_on_termination is for a boot_volume"]),
    ("post", INSTANCES, {"name": "web", "image": 1}, 422, ["flavor", "required"]),
    ("get", f"{INSTANCES}/999999", None, 404, ["instance 999999 not found"]),
    ("delete", f"{INSTANCES}/999999", None, 404, ["instance 999999 not found"]),
    ("post", f"{INSTANCES}/999999/stop", None, 404, ["instance 999999 not found"]),
    ("post", f"{INSTANCES}/actions", {"action": "explode", "ids": [1]}, 422, ["action"]),
    ("post", f"{INSTANCES}/actions", {"action": "stop", "ids": []}, 422, ["ids"]),
    ("post", f"{INSTANCES}/actions", {"action": "stop", "ids": [999999]}, 404, ["instance 999999 not found"]),
    ("get", f"{INSTANCES}?status=exploded", None, 422, ["status (query)"]),
    ("get", f"{INSTANCES}?after=-1", None, 400, ["after:", "not a cursor"]),
    ("get", f"{JOBS}/not-hex", None, 422, ["job_id (path)"]),
    ("get", f"{JOBS}/abc123", None, 404, ["job abc123 not found"]),
    ("get", f"{JOBS}?state=exploded", None, 422, ["state (query)"]),
    ("patch", "/api/v1/hypervisors/999999", {"enabled": False}, 404, ["hypervisor 999999 not found"]),
    ("patch", "/api/v1/hypervisors/1", {"cpu_ratio": 0}, 422, ["cpu_ratio"]),
    ("post", "/api/v1/hypervisors/999999/drain", None, 404, ["hypervisor 999999 not found"]),
    ("post", "/api/v1/hypervisors/999999/undrain", None, 404, ["hypervisor 999999 not found"]),
    ("delete", "/api/v1/hypervisors/999999", None, 404, ["hypervisor 999999 not found"]),
    ("post", "/api/v1/hypervisors/abc/drain", None, 422, ["hypervisor_id (path)", "integer"]),
    ("delete", "/api/v1/hypervisors/-1", None, 422, ["hypervisor_id (path)"]),
    ("get", "/api/v1/hypervisors?include_removed=maybe", None, 422, ["include_removed (query)"]),
    ("post", "/api/v1/login", b"{", 400, ["not valid JSON"]),
    ("post", "/api/v1/login", {"username": "admin"}, 422, ["password", "required"]),
    ("post", "/api/v1/login", {"username": 1, "password": []}, 422, ["username", "password"]),
    ("post", "/api/v1/login", {"username": "", "password": "x"}, 422, ["username"]),
    ("post", "/api/v1/login", {"username": "a", "password": "x" * 5000}, 422, ["password"]),
    ("post", "/api/v1/login", {"username": "a", "password": "x", "lifetime_s": 0}, 422, ["lifetime_s"]),
    ("post", "/api/v1/login", {"username": "a", "password": "x", "lifetime_s": "60"}, 422, ["lifetime_s"]),
    ("post", "/api/v1/organisations", {"name": "x"}, 422, ["admin", "required"]),
    ("post", "/api/v1/organisations", {"name": "x", "admin": {"username": "u", "password": 12345678}}, 422,
     ["admin.password"]),
    ("delete", "/api/v1/organisations/999999", None, 404, ["organisation 999999 not found"]),
    ("delete", "/api/v1/organisations/abc", None, 422, ["org_id (path)"]),
    ("post", "/api/v1/users", {"username": "u", "password": "p" * 8, "role": "root"}, 422, ["role"]),
    ("post", "/api/v1/users", {"username": "u"}, 422, ["password", "required"]),
    ("get", "/api/v1/users/999999", None, 404, ["user 999999 not found in this organisation"]),
    ("get", "/api/v1/users?username=", None, 422, ["username (query)"]),
    ("patch", "/api/v1/memberships/999999", {"role": "reader"}, 404, ["user 999999 not found"]),
    ("patch", "/api/v1/memberships/1", {"role": None}, 422, ["role"]),
    ("delete", "/api/v1/memberships/0", None, 422, ["user_id (path)"]),
    ("post", "/api/v1/memberships", {"username": "nobody"}, 404, ["user 'nobody' not found"]),
    ("post", "/api/v1/me/password", {"current_password": "x"}, 422, ["new_password", "required"]),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "words"), CASES, ids=[f"{c[0]} {c[1]} {c[2]!r}"[:80] for c in CASES])
def test_bad_input_is_a_clear_4xx(
    api: Api, admin_headers: dict[str, str], method: str, path: str, body: object, status: int, words: list[str]
) -> None:
    if isinstance(body, bytes):
        reply = api.client.request(method, path, content=body,
                                   headers=admin_headers | {"Content-Type": "application/json"})
    else:
        reply = api.client.request(method, path, json=body, headers=admin_headers)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"code", "message"}
    for word in words:
        assert word in error["message"], (word, error["message"])


GARBAGE_PATH_VALUES = ["abc", "-1", "0", "1.5", str(2**64), "%00", "%E2%98%83", "1" * 400]
GARBAGE_BODIES: list[bytes | None] = [None, b"", b"{", b"null", b"[]", b'{"name": {"$gt": ""}}', b"\xff\xfe", b"{}" * 10000]
GARBAGE_HEADERS = [
    {},
    {"Authorization": "Bearer garbage"},
    {"Authorization": "Bearer " + "A" * 10000},
    {"Authorization": "Basic Og=="},
    {"Authorization": "Bearer a.b.c", "Content-Type": "text/plain"},
]


def concrete_paths(path: str) -> list[str]:
    """The route's path with every parameter replaced by each garbage value."""
    params = re.findall(r"{[^}]+}", path)
    if not params:
        return [path]
    paths = []
    for value in GARBAGE_PATH_VALUES:
        concrete = path
        for param in params:
            concrete = concrete.replace(param, value)
        paths.append(concrete)
    return paths


def all_routes(api: Api) -> set[tuple[str, str]]:
    """Every (method, path) the app serves.

    Since FastAPI 0.13x ``app.routes`` holds included routers as opaque wrappers, so the
    API routes are read from the OpenAPI document, which FastAPI builds from ``app.routes``
    (include_in_schema=False routes would be missed; there are none), and the plain
    Starlette routes (/docs, /openapi.json) from ``app.routes`` directly.
    """
    found = {(m.upper(), path) for path, ops in api.app.openapi()["paths"].items() for m in ops}
    for route in api.app.routes:
        if isinstance(route, (APIRoute, Route)):
            found |= {(m, route.path) for m in route.methods or ()}
    return found


def garbage_requests(route_path: str, admin_headers: dict[str, str]) -> Iterator[tuple[str, dict[str, str], bytes | None]]:
    """(path, headers, body) to try on one route: the operator's token with every garbage path
    value and every garbage body; a garbage token with every garbage path value; every other
    garbage token once. A bad token is refused before the body matters, so its full product with
    the bodies would only repeat the same refusal (about 27,000 requests, two minutes a database)."""
    paths = concrete_paths(route_path)
    for path, body in itertools.product(paths, GARBAGE_BODIES):
        yield path, admin_headers, body
    for path in paths:
        yield path, GARBAGE_HEADERS[1], GARBAGE_BODIES[2]
    for headers in GARBAGE_HEADERS[:1] + GARBAGE_HEADERS[2:]:
        yield paths[0], headers, GARBAGE_BODIES[2]


def test_every_route_survives_garbage(api: Api, admin_headers: dict[str, str], make_flavor: FlavorMaker) -> None:
    make_flavor("exists")
    routes = all_routes(api)
    assert {path for _, path in routes} >= {
        "/api/v1/login", "/api/v1/flavors", "/api/v1/flavors/{flavor_id}", "/docs", "/openapi.json"}
    tried = 0
    # Logout and a password change end the admin's token: they go last, so the rest is walked with it.
    for method, route_path in sorted(routes, key=lambda r: (r[1] in ("/api/v1/logout", "/api/v1/me/password"), r)):
        for path, headers, body in garbage_requests(route_path, admin_headers):
            reply = api.client.request(method, path, content=body, headers=headers)
            tried += 1
            assert reply.status_code < 500, (method, path, headers, body, reply.text)
            if reply.status_code >= 400 and method != "HEAD":
                assert set(reply.json()["error"]) == {"code", "message"}, reply.text
    assert tried > 500


def test_every_resource_route_needs_a_token(api: Api) -> None:
    """No token is 401 (with WWW-Authenticate) on every route but login and the docs."""
    public = {"/api/v1/login", "/api/v1/login/oidc/start", "/api/v1/login/oidc", "/docs", "/docs/oauth2-redirect",
              "/openapi.json", "/redoc"}
    checked = 0
    for method, route_path in sorted(all_routes(api)):
        if route_path in public or method == "HEAD":
            continue
        reply = api.client.request(method, route_path.replace("{image_id}", "1").replace("{job_id}", "ab")
                                   .replace("{instance_id}", "1").replace("{flavor_id}", "1")
                                   .replace("{hypervisor_id}", "1").replace("{key_id}", "1")
                                   .replace("{org_id}", "1").replace("{user_id}", "1"))
        assert reply.status_code == 401, (method, route_path, reply.text)
        assert reply.headers.get("www-authenticate") == "Bearer"
        checked += 1
    assert checked >= 20


def test_unexpected_error_is_a_generic_500(api: Api) -> None:
    # The last resort only: an unexpected exception says nothing about internals.
    @api.app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    reply = api.client.get("/boom")
    assert reply.status_code == 500
    assert reply.json() == {"error": {"code": "internal", "message": "internal error"}}
