"""Groups (issue 14), on SQLite and PostgreSQL: an organisation's admins manage groups of users;
a group's role on the organisation or on one project is its members'; a user's role is the
highest of their own and their groups', capped by an application credential; project admins
grant roles on their own project only; an application credential acts in one project only."""

from __future__ import annotations

from typing import Any

from sqlalchemy import inspect, text

from cloudland_api.db import make_engine, upgrade
from cloudland_api.models import Role
from tests.api.conftest import Api
from tests.api.test_database import downgrade

API = "/api/v1"
PROJECT = "X-CloudLand-Project"
PASSWORD = "pw-" + "x" * 8
FLAVOR = {"name": "small", "vcpus": 1, "memory_mib": 512, "disk_gib": 1}


def error(reply: Any) -> str:
    message: str = reply.json()["error"]["message"]
    return message


def ok(reply: Any, status: int = 200) -> Any:
    assert reply.status_code == status, reply.text
    return reply.json() if reply.content else None


def me(api: Api, headers: dict[str, str]) -> int:
    found: int = ok(api.client.get(f"{API}/me", headers=headers))["user_id"]
    return found


def sign_in(api: Api, username: str, organisation: str) -> dict[str, str]:
    token = ok(api.client.post(f"{API}/login", json={"username": username, "password": PASSWORD,
                                                     "organisation": organisation}))["token"]
    return {"Authorization": f"Bearer {token}"}


def test_an_organisations_admins_manage_its_groups(api: Api) -> None:
    owner = api.add_user("owner", "acme", Role.admin, PASSWORD)
    member = api.add_user("mia", "acme", Role.member, PASSWORD)
    group = ok(api.client.post(f"{API}/groups", json={"name": "ops", "role": "reader"}, headers=owner), 201)
    assert (group["name"], group["role"], group["members"], group["projects"]) == ("ops", "reader", [], [])
    again = api.client.post(f"{API}/groups", json={"name": "ops"}, headers=owner)
    assert again.status_code == 409 and "group name 'ops' is already used" in error(again)
    refused = api.client.post(f"{API}/groups", json={"name": "mine"}, headers=member)
    assert refused.status_code == 403 and "needs admin in the organisation" in error(refused)
    assert [g["name"] for g in ok(api.client.get(f"{API}/groups", headers=member))["items"]] == ["ops"]
    mia = me(api, member)
    shown = ok(api.client.put(f"{API}/groups/{group['id']}/members/{mia}", headers=owner))
    assert shown["members"] == [{"user_id": mia, "username": "mia"}]
    dev = ok(api.client.post(f"{API}/projects", json={"name": "dev"}, headers=owner), 201)
    granted = ok(api.client.put(f"{API}/groups/{group['id']}/projects/{dev['id']}", json={"role": "admin"},
                                headers=owner))
    assert granted["projects"] == [{"project_id": dev["id"], "project": "dev", "role": "admin"}]
    # Another organisation's admin finds none of it.
    stranger = api.add_user("eve", "evil", Role.admin, PASSWORD)
    assert api.client.get(f"{API}/groups/{group['id']}", headers=stranger).status_code == 404
    assert api.client.put(f"{API}/groups/{group['id']}/members/{mia}", headers=stranger).status_code == 404
    assert ok(api.client.get(f"{API}/groups", headers=stranger))["items"] == []
    # Revoked, removed, deleted.
    ok(api.client.delete(f"{API}/groups/{group['id']}/projects/{dev['id']}", headers=owner), 204)
    gone = api.client.delete(f"{API}/groups/{group['id']}/projects/{dev['id']}", headers=owner)
    assert gone.status_code == 404 and "holds no role on project 'dev'" in error(gone)
    ok(api.client.delete(f"{API}/groups/{group['id']}/role", headers=owner), 204)
    ok(api.client.delete(f"{API}/groups/{group['id']}/members/{mia}", headers=owner), 204)
    assert ok(api.client.get(f"{API}/groups/{group['id']}", headers=owner))["members"] == []
    ok(api.client.delete(f"{API}/groups/{group['id']}", headers=owner), 204)
    assert api.client.get(f"{API}/groups/{group['id']}", headers=owner).status_code == 404


def test_a_users_role_is_the_highest_of_their_own_and_their_groups(api: Api) -> None:
    owner = api.add_user("owner", "acme", Role.admin, PASSWORD)
    reader = api.add_user("rita", "acme", Role.reader, PASSWORD)
    rita = me(api, reader)
    assert api.client.post(f"{API}/flavors", json=FLAVOR, headers=reader).status_code == 403
    builders = ok(api.client.post(f"{API}/groups", json={"name": "builders", "role": "member"}, headers=owner), 201)
    ok(api.client.put(f"{API}/groups/{builders['id']}/members/{rita}", headers=owner))
    # The same token, at its next request: the group's role on the organisation, and on its projects.
    assert ok(api.client.get(f"{API}/me", headers=reader))["role"] == "member"
    ok(api.client.post(f"{API}/flavors", json=FLAVOR, headers=reader), 201)
    vpc = ok(api.client.post(f"{API}/vpcs", json={"name": "v"}, headers=reader), 201)
    no = api.client.delete(f"{API}/vpcs/{vpc['id']}", headers=reader)
    assert no.status_code == 403 and "needs admin in project 'default'" in error(no)
    # A group's role on one project reaches that project only.
    default = ok(api.client.get(f"{API}/quota", headers=owner))["project_id"]
    admins = ok(api.client.post(f"{API}/groups", json={"name": "default-admins"}, headers=owner), 201)
    ok(api.client.put(f"{API}/groups/{admins['id']}/projects/{default}", json={"role": "admin"}, headers=owner))
    ok(api.client.put(f"{API}/groups/{admins['id']}/members/{rita}", headers=owner))
    ok(api.client.post(f"{API}/projects", json={"name": "dev"}, headers=owner), 201)
    in_dev = api.client.post(f"{API}/vpcs", json={"name": "v-dev"}, headers=reader | {PROJECT: "dev"})
    assert in_dev.status_code == 201, in_dev.text  # member there: builders' role on the organisation
    assert api.client.delete(f"{API}/vpcs/{in_dev.json()['id']}", headers=reader | {PROJECT: "dev"}
                             ).status_code == 403
    ok(api.client.delete(f"{API}/vpcs/{vpc['id']}", headers=reader), 204)
    roles = {p["name"]: p["role"] for p in ok(api.client.get(f"{API}/projects", headers=reader))["items"]}
    assert roles == {"default": "admin", "dev": "member"}
    # An application credential caps them all.
    secret = ok(api.client.post(f"{API}/app-credentials", json={"name": "ro", "role": "reader"}, headers=reader),
                201)["secret"]
    capped = api.client.post(f"{API}/vpcs", json={"name": "w"}, headers={"Authorization": f"Bearer {secret}"})
    assert capped.status_code == 403 and "role 'reader' may not create vpcs" in error(capped)
    # Out of the groups, back to her own role at once.
    ok(api.client.delete(f"{API}/groups/{builders['id']}/members/{rita}", headers=owner), 204)
    ok(api.client.delete(f"{API}/groups/{admins['id']}", headers=owner), 204)
    assert ok(api.client.get(f"{API}/me", headers=reader))["role"] == "reader"
    again = api.client.post(f"{API}/vpcs", json={"name": "v2"}, headers=reader)
    assert again.status_code == 403 and "role 'reader' may not create vpcs" in error(again)


def test_a_group_brings_in_a_user_of_another_organisation_for_its_projects(api: Api) -> None:
    owner = api.add_user("owner", "acme", Role.admin, PASSWORD)
    dev = ok(api.client.post(f"{API}/projects", json={"name": "dev"}, headers=owner), 201)
    olga = me(api, api.add_user("olga", "elsewhere", Role.admin, PASSWORD))
    devs = ok(api.client.post(f"{API}/groups", json={"name": "devs"}, headers=owner), 201)
    ok(api.client.put(f"{API}/groups/{devs['id']}/projects/{dev['id']}", json={"role": "admin"}, headers=owner))
    ok(api.client.put(f"{API}/groups/{devs['id']}/members/{olga}", headers=owner))
    hers = sign_in(api, "olga", "acme")  # in acme for its projects only: she acts in dev, the one she holds
    assert [(p["name"], p["role"]) for p in ok(api.client.get(f"{API}/projects", headers=hers))["items"]] == [
        ("dev", "admin")]
    vpc = ok(api.client.post(f"{API}/vpcs", json={"name": "v"}, headers=hers), 201)
    ok(api.client.delete(f"{API}/vpcs/{vpc['id']}", headers=hers), 204)
    refused = api.client.get(f"{API}/vpcs", headers=hers | {PROJECT: "default"})
    assert refused.status_code == 403 and "no role in project 'default'" in error(refused)
    # Leaving the organisation takes her out of its groups.
    ok(api.client.delete(f"{API}/memberships/{olga}", headers=owner), 204)
    assert ok(api.client.get(f"{API}/groups/{devs['id']}", headers=owner))["members"] == []


def test_a_project_admin_grants_roles_on_their_project_only(api: Api) -> None:
    owner = api.add_user("owner", "acme", Role.admin, PASSWORD)
    dev = ok(api.client.post(f"{API}/projects", json={"name": "dev"}, headers=owner), 201)
    default = ok(api.client.get(f"{API}/quota", headers=owner))["project_id"]
    pam_h = api.add_user("pam", "acme", Role.reader, PASSWORD)
    mia_h = api.add_user("mia", "acme", Role.reader, PASSWORD)
    pam, mia = me(api, pam_h), me(api, mia_h)
    ok(api.client.put(f"{API}/projects/{dev['id']}/members/{pam}", json={"role": "admin"}, headers=owner))
    in_dev = pam_h | {PROJECT: "dev"}
    granted = ok(api.client.put(f"{API}/projects/{dev['id']}/members/{mia}", json={"role": "member"}, headers=in_dev))
    assert granted == {"user_id": mia, "username": "mia", "role": "member"}
    ok(api.client.post(f"{API}/vpcs", json={"name": "v"}, headers=mia_h | {PROJECT: "dev"}), 201)
    # Not on another project: refused on her role where she acts, or on the path's project.
    there = api.client.put(f"{API}/projects/{default}/members/{mia}", json={"role": "admin"}, headers=pam_h)
    assert there.status_code == 403 and "needs admin in project 'default'" in error(there)
    named = api.client.put(f"{API}/projects/{default}/members/{mia}", json={"role": "admin"}, headers=in_dev)
    assert named.status_code == 403 and "in project 'default' may not manage its roles" in error(named)
    # Nobody from outside the organisation, and no organisation role.
    olga = me(api, api.add_user("olga", "elsewhere", Role.admin, PASSWORD))
    outside = api.client.put(f"{API}/projects/{dev['id']}/members/{olga}", json={"role": "reader"}, headers=in_dev)
    assert outside.status_code == 404 and "only its admins add users from outside" in error(outside)
    assert api.client.patch(f"{API}/memberships/{mia}", json={"role": "admin"}, headers=in_dev).status_code == 403
    assert api.client.post(f"{API}/groups", json={"name": "g"}, headers=in_dev).status_code == 403
    # She takes the role away again.
    ok(api.client.delete(f"{API}/projects/{dev['id']}/members/{mia}", headers=in_dev), 204)
    refused = api.client.post(f"{API}/vpcs", json={"name": "w"}, headers=mia_h | {PROJECT: "dev"})
    assert refused.status_code == 403


def test_an_application_credential_acts_in_its_project_only(api: Api) -> None:
    owner = api.add_user("owner", "acme", Role.admin, PASSWORD)
    member = api.add_user("mia", "acme", Role.member, PASSWORD)
    dev = ok(api.client.post(f"{API}/projects", json={"name": "dev"}, headers=owner), 201)
    made = ok(api.client.post(f"{API}/app-credentials", json={"name": "ci"}, headers=member | {PROJECT: "dev"}), 201)
    assert (made["project_id"], made["role"]) == (dev["id"], "member")
    bearer = {"Authorization": f"Bearer {made['secret']}"}
    vpc = ok(api.client.post(f"{API}/vpcs", json={"name": "v"}, headers=bearer), 201)  # in dev, unasked
    assert [v["id"] for v in ok(api.client.get(f"{API}/vpcs", headers=owner | {PROJECT: "dev"}))["items"]] == [
        vpc["id"]]
    assert ok(api.client.get(f"{API}/vpcs", headers=bearer | {PROJECT: str(dev["id"])}))["items"][0]["id"] == vpc["id"]
    elsewhere = api.client.get(f"{API}/vpcs", headers=bearer | {PROJECT: "default"})
    assert elsewhere.status_code == 403
    assert f"application credential {made['id']} acts only in project 'dev'" in error(elsewhere)
    assert [p["name"] for p in ok(api.client.get(f"{API}/projects", headers=bearer))["items"]] == ["dev"]
    # A project where the creator holds no role gets no credential; one above theirs there neither.
    outsider = api.add_user("olga", "elsewhere", Role.admin, PASSWORD)
    olga = me(api, outsider)
    ok(api.client.put(f"{API}/projects/{dev['id']}/members/{olga}", json={"role": "reader"}, headers=owner))
    hers = sign_in(api, "olga", "acme")
    above = api.client.post(f"{API}/app-credentials", json={"name": "x", "role": "member"}, headers=hers)
    assert above.status_code == 403 and "above yours ('reader') in project 'dev'" in error(above)
    # Deleting its project ends it.
    ok(api.client.delete(f"{API}/vpcs/{vpc['id']}", headers=owner | {PROJECT: "dev"}), 204)
    ok(api.client.delete(f"{API}/projects/{dev['id']}", headers=owner), 204)
    assert api.client.get(f"{API}/me", headers=bearer).status_code == 401


def test_the_migration_binds_existing_credentials_to_the_default_project(empty_database_url: str) -> None:
    upgrade(empty_database_url, "0011")
    engine = make_engine(empty_database_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO organisations (id, name, operator, created_at) "
                                    "VALUES (4, 'acme', false, CURRENT_TIMESTAMP)"))
            connection.execute(text("INSERT INTO users (id, username, password_hash, created_at) "
                                    "VALUES (3, 'bob', 'x', CURRENT_TIMESTAMP)"))
            connection.execute(text("INSERT INTO memberships (user_id, org_id, role) VALUES (3, 4, 'member')"))
            connection.execute(text(
                "INSERT INTO app_credentials (id, user_id, org_id, name, secret_sha256, role, created_at, expires_at) "
                f"VALUES (9, 3, 4, 'ci', '{'0' * 64}', 'reader', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
        upgrade(empty_database_url)
        with engine.connect() as connection:
            default = connection.execute(text("SELECT id FROM projects WHERE org_id = 4 AND is_default")).scalar_one()
            assert connection.execute(text("SELECT project_id FROM app_credentials")).scalar_one() == default
        downgrade(empty_database_url, "0012")
        inspector = inspect(engine)
        assert not {"groups", "group_members", "group_project_roles"} & set(inspector.get_table_names())
        assert "project_id" not in {c["name"] for c in inspector.get_columns("app_credentials")}
        assert "resource_type" not in {c["name"] for c in inspector.get_columns("audit_events")}
        with engine.connect() as connection:
            assert connection.execute(text("SELECT name FROM app_credentials")).scalar_one() == "ci"
    finally:
        engine.dispose()
