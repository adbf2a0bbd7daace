"""Projects inside organisations (issue 14), on SQLite and PostgreSQL: the default project, a
request's project (the X-CloudLand-Project header), roles on one project, isolation between
projects, and the migration that moves existing rows into a default project."""

from __future__ import annotations

from typing import Any

from sqlalchemy import inspect, text

from cloudland_api.db import make_engine, upgrade
from cloudland_api.models import Role
from tests.api.conftest import Api, FlavorMaker, ImageMaker, Launcher, running
from tests.api.test_database import downgrade

API = "/api/v1"
PROJECT = "X-CloudLand-Project"


def error(reply: Any) -> str:
    message: str = reply.json()["error"]["message"]
    return message


def make_project(api: Api, headers: dict[str, str], name: str) -> dict[str, Any]:
    reply = api.client.post(f"{API}/projects", json={"name": name}, headers=headers)
    assert reply.status_code == 201, reply.text
    project: dict[str, Any] = reply.json()
    return project


def user_id(api: Api, headers: dict[str, str]) -> int:
    found: int = api.client.get(f"{API}/me", headers=headers).json()["user_id"]
    return found


def test_every_organisation_has_a_default_project_that_cannot_go(api: Api, admin_headers: dict[str, str]) -> None:
    listed = api.client.get(f"{API}/projects", headers=admin_headers).json()["items"]
    assert [(p["name"], p["is_default"], p["role"]) for p in listed] == [("default", True, "admin")]
    reply = api.client.delete(f"{API}/projects/{listed[0]['id']}", headers=admin_headers)
    assert reply.status_code == 409 and "default project" in error(reply)
    other = api.add_user("ann", "acme", Role.admin)  # an organisation made any way gets one too
    assert [p["name"] for p in api.client.get(f"{API}/projects", headers=other).json()["items"]] == ["default"]


def test_projects_are_created_listed_shown_and_deleted(api: Api, admin_headers: dict[str, str]) -> None:
    dev = make_project(api, admin_headers, "dev")
    assert (dev["name"], dev["is_default"]) == ("dev", False)
    again = api.client.post(f"{API}/projects", json={"name": "dev"}, headers=admin_headers)
    assert again.status_code == 409 and "'dev' is already used" in error(again)
    assert api.client.get(f"{API}/projects/{dev['id']}", headers=admin_headers).json()["name"] == "dev"
    stranger = api.add_user("ann", "acme", Role.admin)
    assert api.client.get(f"{API}/projects/{dev['id']}", headers=stranger).status_code == 404
    assert api.client.delete(f"{API}/projects/{dev['id']}", headers=stranger).status_code == 404
    # A project holding something is not deleted.
    key = api.client.post(f"{API}/ssh-keys", json={"name": "k", "public_key": SSH_KEY},
                          headers=admin_headers | {PROJECT: "dev"})
    assert key.status_code == 201, key.text
    held = api.client.delete(f"{API}/projects/{dev['id']}", headers=admin_headers)
    assert held.status_code == 409 and "still holds ssh keys" in error(held)
    gone = api.client.delete(f"{API}/ssh-keys/{key.json()['id']}", headers=admin_headers | {PROJECT: "dev"})
    assert gone.status_code == 204
    assert api.client.delete(f"{API}/projects/{dev['id']}", headers=admin_headers).status_code == 204
    assert api.client.get(f"{API}/projects/{dev['id']}", headers=admin_headers).status_code == 404


SSH_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHyZT4bTiP2GY5ZcJC7ap4sDQqoLZFCzJV8kh3ggZ3Z4 test@cloudland")


def test_resources_of_one_project_are_invisible_in_another(api: Api, admin_headers: dict[str, str],
                                                          make_flavor: FlavorMaker, make_image: ImageMaker) -> None:
    dev_project = make_project(api, admin_headers, "dev")
    dev = admin_headers | {PROJECT: "dev"}
    make_flavor("small")  # flavors belong to the organisation: every project uses them
    make_image("img", headers=dev)
    made = api.client.post(f"{API}/instances", json={"name": "web", "flavor": "small", "image": "img"}, headers=dev)
    assert made.status_code == 202, made.text
    vm = made.json()["instances"][0]
    assert [i["name"] for i in api.client.get(f"{API}/instances", headers=dev).json()["items"]] == ["web"]
    assert api.client.get(f"{API}/instances", headers=admin_headers).json()["items"] == []
    assert api.client.get(f"{API}/instances/{vm['id']}", headers=admin_headers).status_code == 404
    assert api.client.get(f"{API}/images", headers=admin_headers).json()["items"] == []
    job = made.json()["jobs"][0]["id"]
    assert api.client.get(f"{API}/jobs/{job}", headers=dev).status_code == 200
    assert api.client.get(f"{API}/jobs/{job}", headers=admin_headers).status_code == 404
    # By id or by name; an unknown project, or another organisation's, is a 404 naming it.
    by_id = admin_headers | {PROJECT: str(dev_project["id"])}
    assert [i["name"] for i in api.client.get(f"{API}/instances", headers=by_id).json()["items"]] == ["web"]
    missing = api.client.get(f"{API}/instances", headers=admin_headers | {PROJECT: "nope"})
    assert missing.status_code == 404 and "project 'nope' not found" in error(missing)
    bad = api.client.get(f"{API}/instances", headers=admin_headers | {PROJECT: "a b"})
    assert bad.status_code == 422 and "x-cloudland-project" in error(bad).lower()


def test_a_role_on_one_project_reaches_that_project_only(api: Api, admin_headers: dict[str, str],
                                                         make_flavor: FlavorMaker, make_image: ImageMaker) -> None:
    dev = make_project(api, admin_headers, "dev")
    outsider = api.add_user("olga", "elsewhere", Role.admin)  # a user of another organisation
    olga = user_id(api, outsider)
    granted = api.client.put(f"{API}/projects/{dev['id']}/members/{olga}", json={"role": "member"},
                             headers=admin_headers)
    assert granted.status_code == 200 and granted.json() == {"user_id": olga, "username": "olga", "role": "member"}
    members = api.client.get(f"{API}/projects/{dev['id']}/members", headers=admin_headers).json()["items"]
    assert [(m["username"], m["role"]) for m in members] == [("olga", "member")]
    # She signs in to the operator organisation: its default project is dev, the one she holds.
    token = api.client.post(f"{API}/login", json={"username": "olga", "password": "pw-" + "x" * 8,
                                                  "organisation": "admin"}).json()["token"]
    olga_h = {"Authorization": f"Bearer {token}"}
    assert [(p["name"], p["role"]) for p in api.client.get(f"{API}/projects", headers=olga_h).json()["items"]] == [
        ("dev", "member")]
    make_flavor("small")
    make_image("img", headers=olga_h)
    made = api.client.post(f"{API}/instances", json={"name": "hers", "flavor": "small", "image": "img"}, headers=olga_h)
    assert made.status_code == 202, made.text
    # The default project is not hers: refused there, on the role alone.
    refused = api.client.get(f"{API}/instances", headers=olga_h | {PROJECT: "default"})
    assert refused.status_code == 403 and "no role in project 'default'" in error(refused)
    # A member does not delete VPCs; revoking the role ends her access at once.
    vpc = api.client.post(f"{API}/vpcs", json={"name": "v"}, headers=olga_h)
    assert vpc.status_code == 201, vpc.text
    no = api.client.delete(f"{API}/vpcs/{vpc.json()['id']}", headers=olga_h)
    assert no.status_code == 403 and "needs admin in project 'dev'" in error(no)
    assert api.client.delete(f"{API}/projects/{dev['id']}/members/{olga}", headers=admin_headers).status_code == 204
    gone = api.client.get(f"{API}/instances", headers=olga_h)
    assert gone.status_code == 403 and "no role in project" in error(gone)


def test_a_project_reader_reads_but_changes_nothing(api: Api, admin_headers: dict[str, str]) -> None:
    dev = make_project(api, admin_headers, "dev")
    reader = api.add_user("rita", "elsewhere", Role.member)
    rita = user_id(api, reader)
    api.client.put(f"{API}/projects/{dev['id']}/members/{rita}", json={"role": "reader"}, headers=admin_headers)
    token = api.client.post(f"{API}/login", json={"username": "rita", "password": "pw-" + "x" * 8,
                                                  "organisation": "admin"}).json()["token"]
    rita_h = {"Authorization": f"Bearer {token}"}
    assert api.client.get(f"{API}/vpcs", headers=rita_h).status_code == 200
    no = api.client.post(f"{API}/vpcs", json={"name": "v"}, headers=rita_h)
    assert no.status_code == 403 and "role 'reader' may not create vpcs" in error(no)


def test_the_migration_moves_existing_rows_into_a_default_project(empty_database_url: str) -> None:
    """0013 on a database with data: each organisation gets a default project holding all its rows;
    the downgrade takes projects away and keeps the rows."""
    upgrade(empty_database_url, "0008")
    engine = make_engine(empty_database_url)
    try:
        with engine.begin() as connection:
            for org_id, name in ((1, "acme"), (2, "globex")):
                connection.execute(text("INSERT INTO organisations (id, name, operator, created_at) "
                                        f"VALUES ({org_id}, '{name}', false, CURRENT_TIMESTAMP)"))
                connection.execute(text(
                    "INSERT INTO instances (id, org_id, name, uuid, vcpus, memory_mib, disk_gib, arch, status, "
                    f"created_at, updated_at) VALUES ({org_id}, {org_id}, 'vm', 'u-{org_id}', 1, 64, 1, 'x86_64', "
                    "'running', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
                connection.execute(text(
                    "INSERT INTO ssh_keys (org_id, name, public_key, fingerprint, created_at) "
                    f"VALUES ({org_id}, 'k', 'ssh-ed25519 AAAA', 'SHA256:x{org_id}', CURRENT_TIMESTAMP)"))
                connection.execute(text(
                    "INSERT INTO jobs (id, org_id, batch, kind, action, subject_type, subject_id, args, state, "
                    f"attempts, created_at, updated_at) VALUES ('j{org_id}', {org_id}, 'b', 'vm', 'create', "
                    f"'instance', {org_id}, '{{}}', 'succeeded', 1, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
            connection.execute(text("INSERT INTO users (id, username, password_hash, created_at) "
                                    "VALUES (3, 'bob', 'x', CURRENT_TIMESTAMP)"))
            connection.execute(text("INSERT INTO memberships (user_id, org_id, role) VALUES (3, 1, 'admin')"))
        upgrade(empty_database_url)
        with engine.connect() as connection:
            projects = dict(connection.execute(text(
                "SELECT org_id, id FROM projects WHERE name = 'default' AND is_default")).all())
            assert sorted(projects) == [1, 2]
            for table in ("instances", "ssh_keys", "jobs"):
                rows = dict(connection.execute(text(f"SELECT org_id, project_id FROM {table}")).all())
                assert rows == projects, table
            assert connection.execute(text("SELECT projects_only FROM memberships")).scalar_one() in (False, 0)
        downgrade(empty_database_url, "0008")
        inspector = inspect(engine)
        assert "projects" not in inspector.get_table_names()
        assert "project_id" not in {c["name"] for c in inspector.get_columns("instances")}
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM instances")).scalar_one() == 2
            assert tuple(connection.execute(text("SELECT user_id, org_id, role FROM memberships")).one()) == (
                3, 1, "admin")
    finally:
        engine.dispose()


def test_another_projects_console_is_not_found(api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    """The console's WebSocket resolves the project as every route does: by the header for a token,
    the instance's own for a ticket, with the role there read again when it is redeemed."""
    from tests.api.test_console import closed_with, ticket

    vm = running(api, launch, "con")
    url = f"/api/v1/instances/{vm['id']}/console"
    dev = make_project(api, admin_headers, "dev")
    api.add_user("pat", "elsewhere", Role.admin)
    pat_id = user_id(api, api.headers("pat", "pw-" + "x" * 8))
    assert api.client.put(f"{API}/projects/{dev['id']}/members/{pat_id}", json={"role": "admin"},
                          headers=admin_headers).status_code == 200
    token = api.client.post(f"{API}/login", json={"username": "pat", "password": "pw-" + "x" * 8,
                                                  "organisation": "admin"}).json()["token"]
    pat = {"Authorization": f"Bearer {token}"}
    assert closed_with(api, url, pat)[0] == 4404  # in dev, the instance is not there
    assert closed_with(api, url, pat | {PROJECT: "default"})[0] == 4404  # no role in default
    assert closed_with(api, url, admin_headers | {PROJECT: "a b"})[0] == 4400
    # The admin's ticket opens it (no tree here: the console then ends saying so).
    assert closed_with(api, url + "?ticket=" + ticket(api, vm["id"], admin_headers))[0] == 1011
