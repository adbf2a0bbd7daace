"""The cross-tenant matrix (issue 14 must-show 4), generated from the OpenAPI document, on
SQLite and PostgreSQL: for every route with an id, with the ids of real rows of one project of
one organisation, a caller of another organisation, an admin of another project of the same
organisation, and (for every change) a reader of that very project are refused, and nothing
changed. A route whose path names an id this file cannot make, or whose body it does not know,
fails the test until it is covered here."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from cloudland_api import policy
from cloudland_api.models import Role
from tests.api.conftest import Api, FlavorMaker, ImageMaker, running, settle
from tests.api.test_volumes import attach, post, volume

API = "/api/v1"
PROJECT = "X-CloudLand-Project"
PASSWORD = "pw-" + "x" * 8
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHyZT4bTiP2GY5ZcJC7ap4sDQqoLZFCzJV8kh3ggZ3Z4 test@cloudland"

# A valid body for every route that takes one, so a refusal is the route's, not a 422.
BODIES: dict[tuple[str, str], Any] = {
    ("put", "/api/v1/images/{image_id}/file"): b"\0" * 512,
    ("put", "/api/v1/images/{image_id}/upload"): b"\0" * 512,
    ("post", "/api/v1/instances/{instance_id}/start"): {},
    ("post", "/api/v1/instances/{instance_id}/stop"): {"force": True},
    ("post", "/api/v1/instances/{instance_id}/reboot"): {},
    ("post", "/api/v1/instances/{instance_id}/resize"): {"flavor": "small"},
    ("post", "/api/v1/instances/{instance_id}/rebuild"): {"image": "img"},
    ("post", "/api/v1/instances/{instance_id}/capture"): {"name": "cap"},
    ("post", "/api/v1/instances/{instance_id}/nics"): {"network": "{subnet_id}"},
    ("patch", "/api/v1/hypervisors/{hypervisor_id}"): {"enabled": False},
    ("patch", "/api/v1/memberships/{user_id}"): {"role": "reader"},
    ("put", "/api/v1/projects/{project_id}/members/{user_id}"): {"role": "admin"},
    ("put", "/api/v1/projects/{project_id}/quota"): {"limits": {"instances": 0}},
    ("put", "/api/v1/organisations/{org_id}/quota"): {"limits": {"instances": 0}},
    ("put", "/api/v1/organisations/{org_id}/ldap"): {"url": "ldap://127.0.0.1:1", "bind_dn": "cn=x",
                                                     "user_base": "dc=x", "role_map": {"g": "admin"}},
    ("put", "/api/v1/organisations/{org_id}/oidc"): {"issuer": "https://127.0.0.1:1", "client_id": "x",
                                                     "role_map": {"g": "admin"}},
    ("post", "/api/v1/volumes/{volume_id}/extend"): {"size_gib": 20},
    ("post", "/api/v1/volumes/{volume_id}/attachments"): {"instance": "{instance_id}"},
    ("post", "/api/v1/volumes/{volume_id}/snapshots"): {"name": "s2"},
    ("patch", "/api/v1/ports/{port_id}"): {"security_groups": ["{group}"]},
    ("post", "/api/v1/routers/{router_id}/subnets"): {"subnet": "{subnet_id}"},
    ("put", "/api/v1/routers/{router_id}/gateway"): {"external_network": None},
    ("put", "/api/v1/floating-ips/{fip_id}/port"): {"port": "{port_id}"},
    ("post", "/api/v1/security-groups/{group}/rules"): {"protocol": "tcp", "port_min": 22, "port_max": 22,
                                                        "remote_cidr": "0.0.0.0/0"},
    ("put", "/api/v1/groups/{group_id}/role"): {"role": "admin"},
    ("put", "/api/v1/groups/{group_id}/projects/{project_id}"): {"role": "admin"},
}


# Resources the operator shares with every organisation (issue 12: external networks).
SHARED = {"external_network"}


def operations(api: Api) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Every operation of the OpenAPI document whose path names an id."""
    for path, ops in api.app.openapi()["paths"].items():
        if "{" in path:
            for method, operation in ops.items():
                yield method, path, operation


def fill(template: Any, ids: dict[str, Any]) -> Any:
    if isinstance(template, str):
        whole = re.fullmatch(r"{(\w+)}", template)
        return ids[whole.group(1)] if whole else re.sub(r"{(\w+)}", lambda m: str(ids[m.group(1)]), template)
    if isinstance(template, dict):
        return {k: fill(v, ids) for k, v in template.items()}
    if isinstance(template, list):
        return [fill(v, ids) for v in template]
    return template


def sign_in(api: Api, username: str, organisation: str) -> dict[str, str]:
    reply = api.client.post(f"{API}/login", json={"username": username, "password": PASSWORD,
                                                  "organisation": organisation})
    assert reply.status_code == 200, reply.text
    return {"Authorization": f"Bearer {reply.json()['token']}"}


@pytest.fixture
def world(api: Api, admin_headers: dict[str, str], make_flavor: FlavorMaker, make_image: ImageMaker
          ) -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
    """One row of every kind in project ``default`` of organisation ``acme``, and the callers."""
    owner = api.add_user("owner", "acme", Role.admin, PASSWORD)
    ids: dict[str, Any] = {}
    ids["flavor_id"] = make_flavor("small", headers=owner)["id"]
    ids["image_id"] = make_image("img", headers=owner)["id"]
    ids["key_id"] = api.client.post(f"{API}/ssh-keys", json={"name": "k", "public_key": SSH_KEY},
                                    headers=owner).json()["id"]
    ids["vpc_id"] = api.client.post(f"{API}/vpcs", json={"name": "v"}, headers=owner).json()["id"]
    subnet = api.client.post(f"{API}/subnets", json={"name": "s", "vpc": ids["vpc_id"], "cidr": "10.9.0.0/24"},
                             headers=owner)
    assert subnet.status_code == 201, subnet.text
    ids["subnet_id"] = subnet.json()["id"]
    vm = running(api, lambda name: api.client.post(f"{API}/instances", json={
        "name": name, "flavor": "small", "image": "img", "networks": [ids["subnet_id"]]}, headers=owner).json(),
        "web", hypervisor=7)
    ids["instance_id"] = vm["id"]
    ids["port_id"] = api.client.get(f"{API}/ports", headers=owner).json()["items"][0]["id"]
    ids["job_id"] = api.client.get(f"{API}/jobs", headers=owner).json()["items"][0]["id"]
    ids["hypervisor_id"] = 7
    attached = volume(api, owner, "attached", instance=vm["id"])
    accepted = attach(api, owner, attached["id"], vm["id"])
    settle(api, accepted["job"]["id"])
    ids["attachment_id"] = accepted["volume"]["attachment"]["id"]
    ids["volume_id"] = attached["id"]
    spare = volume(api, owner, "spare")
    taken = post(api, owner, f"volumes/{spare['id']}/snapshots", {"name": "s1"})
    settle(api, taken["job"]["id"])
    ids["snapshot_id"] = taken["snapshot"]["id"]
    # Issue 12: an external network (the operator's), a router on the VPC with a gateway there, a
    # floating IP on the VM's port, a security group with a rule.
    external = api.client.post(f"{API}/external-networks", headers=admin_headers, json={
        "name": "public", "cidr": "203.0.113.0/24", "bridge": "ext0"})
    assert external.status_code == 201, external.text
    ids["external_id"] = external.json()["id"]
    ids["router_id"] = post(api, owner, "routers", {"name": "r", "vpc": ids["vpc_id"]}, status=201)["id"]
    post(api, owner, f"routers/{ids['router_id']}/subnets", {"subnet": ids["subnet_id"]}, status=200)
    gateway = api.client.put(f"{API}/routers/{ids['router_id']}/gateway", json={"external_network": "public"},
                             headers=owner)
    assert gateway.status_code == 200, gateway.text
    ids["fip_id"] = post(api, owner, "floating-ips", {"external_network": "public"}, status=201)["id"]
    associated = api.client.put(f"{API}/floating-ips/{ids['fip_id']}/port", json={"port": ids["port_id"]},
                                headers=owner)
    assert associated.status_code == 200, associated.text
    ids["group"] = post(api, owner, "security-groups", {"name": "web"}, status=201)["id"]
    ids["rule_id"] = post(api, owner, f"security-groups/{ids['group']}/rules", {"protocol": "icmp"}, status=201)["id"]
    me = api.client.get(f"{API}/me", headers=owner).json()
    ids["org_id"] = me["org_id"]
    member = api.add_user("mia", "acme", Role.member, PASSWORD)
    ids["user_id"] = api.client.get(f"{API}/me", headers=member).json()["user_id"]
    ids["project_id"] = api.client.get(f"{API}/quota", headers=owner).json()["project_id"]
    group = post(api, owner, "groups", {"name": "ops", "role": "reader"}, status=201)
    ids["group_id"] = group["id"]
    assert api.client.put(f"{API}/groups/{group['id']}/members/{ids['user_id']}", headers=owner).status_code == 200
    ldap = api.client.put(f"{API}/organisations/{ids['org_id']}/ldap", headers=admin_headers, json={
        "url": "ldap://127.0.0.1:1", "bind_dn": "cn=x", "bind_password": "x", "user_base": "dc=x",
        "group_base": "dc=x", "roles": {"g": "admin"}})
    assert ldap.status_code == 200, ldap.text
    ids["map_id"] = post(api, owner, "directory-groups", {"directory": "ldap", "name": "cn=ops,dc=x",
                                                          "group": "ops"}, status=201)["id"]
    credential = api.client.post(f"{API}/app-credentials", json={"name": "ci"}, headers=owner)
    assert credential.status_code == 201, credential.text
    ids["credential_id"] = credential.json()["id"]
    # The callers: another organisation's admin; an admin of another project of acme only; a
    # reader of acme's project default only.
    other_project = api.client.post(f"{API}/projects", json={"name": "other"}, headers=owner).json()
    callers = {"other organisation": api.add_user("eve", "evil", Role.admin, PASSWORD)}
    for name, project, role in (("pat", other_project["id"], "admin"), ("rita", ids["project_id"], "reader")):
        api.add_user(name, "elsewhere", Role.admin, PASSWORD)
        who = api.client.get(f"{API}/me", headers=sign_in(api, name, "elsewhere")).json()["user_id"]
        granted = api.client.put(f"{API}/projects/{project}/members/{who}", json={"role": role}, headers=owner)
        assert granted.status_code == 200, granted.text
    callers["other project"] = sign_in(api, "pat", "acme")
    callers["reader"] = sign_in(api, "rita", "acme")
    callers["owner"] = owner
    return ids, callers


def call(api: Api, method: str, path: str, ids: dict[str, Any], headers: dict[str, str]) -> Any:
    body = BODIES.get((method, path))
    url = fill(path, ids)
    if isinstance(body, bytes):
        return api.client.request(method, url, content=body,
                                  headers=headers | {"Content-Type": "application/octet-stream"})
    return api.client.request(method, url, json=fill(body, ids) if body is not None else None, headers=headers)


def test_every_route_with_an_id_is_covered(api: Api) -> None:
    """A new route with an id this file cannot fill, or a body it does not know, fails here."""
    known = {"flavor_id", "image_id", "key_id", "instance_id", "port_id", "job_id", "hypervisor_id", "org_id",
             "user_id", "project_id", "credential_id", "vpc_id", "subnet_id", "volume_id", "attachment_id",
             "snapshot_id", "external_id", "router_id", "fip_id", "group", "rule_id", "group_id", "map_id"}
    for method, path, operation in operations(api):
        assert set(re.findall(r"{(\w+)}", path)) <= known, f"{method} {path}: add its id to the world fixture"
        if operation.get("requestBody", {}).get("required"):
            assert (method, path) in BODIES, f"{method} {path}: add a valid body to BODIES"
    assert set(BODIES) <= {(m, p) for m, p, _ in operations(api)}, "BODIES names a route that is gone"


def test_the_cross_tenant_matrix(api: Api, world: tuple[dict[str, Any], dict[str, dict[str, str]]]) -> None:
    ids, callers = world
    refused: dict[str, int] = {"other organisation": 0, "other project": 0, "reader": 0}
    read_by_other_project: set[str] = set()
    for method, path, operation in operations(api):
        entry = operation["x-policy"]
        rule = policy.POLICY[(entry["resource"], entry["action"])]
        changes = method != "get" and (method, path) not in policy.READING_POSTS
        for who, headers in callers.items():
            if who == "owner":
                continue
            if who == "other project" and rule.scope is policy.Scope.organisation and not changes \
                    and entry["resource"] != "project":
                continue  # the organisation's own things (flavors, its users) are every member's to read
            if who == "reader" and not changes:
                continue  # a reader of the project reads it
            if entry["resource"] in SHARED and not changes:
                continue  # the operator's, every organisation's to read
            reply = call(api, method, path, ids, headers)
            allowed = {401} if rule.scope is policy.Scope.job_token else {403, 404}
            assert reply.status_code in allowed, (who, method, path, reply.status_code, reply.text)
            refused[who] += 1
            if who == "other project" and not changes:
                read_by_other_project.add(entry["resource"])
    assert refused["other organisation"] >= 55 and refused["other project"] >= 43 and refused["reader"] >= 35, refused
    # Issue 12's tables are per project (migration 0013): another project of the organisation
    # cannot even read them; external networks stay shared.
    assert {"router", "floating_ip", "security_group"} <= read_by_other_project, read_by_other_project
    assert "external_network" not in read_by_other_project
    # Nothing changed: every row is still there for its owner.
    owner = callers["owner"]
    checked = 0
    for method, path, operation in operations(api):
        scope = operation["x-policy"]["scope"]
        if method == "get" and scope in ("project", "organisation") and not path.endswith(("/file", "/vnc")):
            reply = call(api, method, path, ids, owner)
            assert reply.status_code == 200, (path, reply.text)
            checked += 1
    assert checked >= 12
    quota = api.client.get(f"{API}/quota", headers=owner).json()["items"]
    assert all(line["limit"] is None for line in quota)
