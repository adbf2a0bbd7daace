"""Names unique per project, not per organisation (issue 14), on SQLite and PostgreSQL: two
projects of one organisation may each have ``web`` of every named kind (images, SSH keys, VPCs,
subnets, routers, volumes, snapshots, security groups, live instances), one project may not have
two; a name in a request resolves in the request's project; where a name is not unique (a caller
acting in no project) it is a 409 naming the candidates' ids; migration 0015 up and down with data."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from cloudland.errors import Conflict
from cloudland_api.db import make_engine, upgrade
from cloudland_api.models import Role, Vpc
from cloudland_api.services import crud
from cloudland_api.services.identity import Caller
from tests.api.conftest import Api, FlavorMaker, ImageMaker, add_hypervisor, settle
from tests.api.test_database import downgrade
from tests.api.test_networks import API, error, post

PROJECT = "X-CloudLand-Project"


def web_of_every_kind(api: Api, headers: dict[str, str], cidr: str, make_image: ImageMaker) -> dict[str, Any]:
    """One ``web`` of each named kind in the project ``headers`` act in, each found by name."""
    made: dict[str, Any] = {"image": make_image("web", headers=headers)}
    made["ssh_key"] = post(api, headers, "ssh-keys", {"name": "web", "public_key": (
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl web")})
    made["vpc"] = post(api, headers, "vpcs", {"name": "web"})
    made["subnet"] = post(api, headers, "subnets", {"name": "web", "vpc": "web", "cidr": cidr})
    made["router"] = post(api, headers, "routers", {"name": "web", "vpc": "web"})
    made["security_group"] = post(api, headers, "security-groups", {"name": "web"})
    accepted = post(api, headers, "volumes", {"name": "web", "size_gib": 1}, 202)
    settle(api, accepted["job"]["id"])
    made["volume"] = accepted["volume"]
    snapshot = post(api, headers, f"volumes/{made['volume']['id']}/snapshots", {"name": "web"}, 202)
    made["snapshot"] = snapshot["snapshot"]
    return made


def test_two_projects_each_have_web_of_every_kind_and_names_resolve_in_the_requests_project(
        api: Api, admin_headers: dict[str, str], make_flavor: FlavorMaker, make_image: ImageMaker) -> None:
    add_hypervisor(api, 3)
    post(api, admin_headers, "projects", {"name": "dev"})
    dev = admin_headers | {PROJECT: "dev"}
    make_flavor("small")
    mine = web_of_every_kind(api, admin_headers, "10.0.0.0/24", make_image)
    theirs = web_of_every_kind(api, dev, "10.0.0.0/24", make_image)
    for kind in mine:
        assert mine[kind]["id"] != theirs[kind]["id"], kind
    # A second of any kind in one project is refused, naming the project as the scope.
    again = api.client.post(f"{API}/vpcs", json={"name": "web"}, headers=dev)
    assert error(again, 409) == "vpc name 'web' is already used in this project"
    again = api.client.post(f"{API}/subnets", json={"name": "web", "vpc": "web", "cidr": "10.9.0.0/24"}, headers=dev)
    assert error(again, 409) == "subnet name 'web' is already used in this project"
    # A VM in each project, named alike, made from that project's things named "web".
    vms = {}
    for headers, things in ((admin_headers, mine), (dev, theirs)):
        reply = api.client.post(f"{API}/instances", headers=headers, json={
            "name": "web", "flavor": "small", "image": "web", "ssh_key": "web", "networks": ["web"],
            "security_groups": ["web"]})
        assert reply.status_code == 202, reply.text
        [vm] = reply.json()["instances"]
        assert (vm["image_id"], vm["ssh_key_id"]) == (things["image"]["id"], things["ssh_key"]["id"])
        [port] = api.client.get(f"{API}/ports", headers=headers).json()["items"]
        assert port["subnet_id"] == things["subnet"]["id"]
        vms[headers.get(PROJECT, "default")] = vm
    assert vms["default"]["id"] != vms["dev"]["id"]
    taken = api.client.post(f"{API}/instances", headers=dev, json={"name": "web", "flavor": "small", "image": "web"})
    assert error(taken, 409) == "instance name 'web' is already used in this project"
    # Names in paths resolve in the request's project too.
    for path, kind in (("security-groups/web", "security_group"),):
        assert api.client.get(f"{API}/{path}", headers=dev).json()["id"] == theirs[kind]["id"]
        assert api.client.get(f"{API}/{path}", headers=admin_headers).json()["id"] == mine[kind]["id"]


def test_a_name_several_rows_share_is_a_conflict_naming_their_ids(api: Api, admin_headers: dict[str, str]) -> None:
    """A caller acting in no project (the control plane's: ``networks.make_default_network``)
    looks names up across the organisation's projects, where ``web`` is not unique."""
    post(api, admin_headers, "projects", {"name": "dev"})
    mine = post(api, admin_headers, "vpcs", {"name": "web"})
    theirs = post(api, admin_headers | {PROJECT: "dev"}, "vpcs", {"name": "web"})
    with api.app.state.sessions() as session:
        ours, dev = session.get(Vpc, mine["id"]), session.get(Vpc, theirs["id"])
        assert ours is not None and dev is not None and ours.project_id != dev.project_id
        everywhere = Caller(user_id=0, username="", org_id=ours.org_id, role=Role.admin)
        with pytest.raises(Conflict) as refused:
            crud.get(session, Vpc, everywhere, "web", "vpc")
        assert str(refused.value) == (f"vpc name 'web' is ambiguous: vpcs {mine['id']}, {theirs['id']} have it; "
                                      "name one by its id")
        assert crud.get(session, Vpc, everywhere, theirs["id"], "vpc").id == theirs["id"]
        in_dev = Caller(user_id=0, username="", org_id=ours.org_id, role=Role.admin, project_id=dev.project_id)
        assert crud.get(session, Vpc, in_dev, "web", "vpc").id == theirs["id"]


def test_a_deleted_instances_name_does_not_make_a_live_ones_ambiguous(
        api: Api, admin_headers: dict[str, str], make_flavor: FlavorMaker, make_image: ImageMaker) -> None:
    """Deleted instances keep their rows and names: a lookup by name (a volume's attach) takes the
    live one."""
    add_hypervisor(api, 3)
    make_flavor("small")
    make_image("img")
    body = {"name": "app", "flavor": "small", "image": "img"}
    first = api.client.post(f"{API}/instances", headers=admin_headers, json=body).json()
    with api.app.state.write_sessions() as session:
        session.execute(text(f"UPDATE instances SET status = 'deleted', job_id = NULL "
                             f"WHERE id = {first['instances'][0]['id']}"))
        session.commit()
    second = api.client.post(f"{API}/instances", headers=admin_headers, json=body).json()
    [vm] = second["instances"]
    with api.app.state.write_sessions() as session:
        session.execute(text(f"UPDATE instances SET status = 'running', job_id = NULL, hypervisor_id = 3 "
                             f"WHERE id = {vm['id']}"))
        session.commit()
    accepted = post(api, admin_headers, "volumes", {"name": "d", "size_gib": 1, "instance": "app"}, 202)
    assert accepted["volume"]["hypervisor_id"] == 3


# -- migration 0015 ------------------------------------------------------------------------------

ROWS = [
    "INSERT INTO organisations (id, name, operator, created_at) VALUES (1, 'acme', false, CURRENT_TIMESTAMP)",
    "INSERT INTO projects (id, org_id, name, is_default, created_at) "
    "VALUES (10, 1, 'default', true, CURRENT_TIMESTAMP), (11, 1, 'dev', false, CURRENT_TIMESTAMP)",
    "INSERT INTO images (id, org_id, project_id, name, arch, disk_format, status, size_bytes, created_at) "
    "VALUES (1, 1, 10, 'web', 'x86_64', 'raw', 'active', 0, CURRENT_TIMESTAMP), "
    "(2, 1, 10, 'gone', 'x86_64', 'raw', 'active', 0, CURRENT_TIMESTAMP)",
    "DELETE FROM images WHERE id = 2",
    "INSERT INTO ssh_keys (id, org_id, project_id, name, public_key, fingerprint, created_at) "
    "VALUES (1, 1, 10, 'web', 'k', 'f', CURRENT_TIMESTAMP)",
    "INSERT INTO vpcs (id, org_id, project_id, name, mtu, domain, generation, created_at) "
    "VALUES (1, 1, 10, 'web', 1450, 'v.cloudland', 0, CURRENT_TIMESTAMP)",
    "INSERT INTO subnets (id, org_id, project_id, vpc_id, name, cidr, gateway, dhcp, allocation_pools, "
    "dns_servers, vni, created_at) VALUES (1, 1, 10, 1, 'web', '10.0.0.0/24', '10.0.0.1', true, '[]', '[]', "
    "100, CURRENT_TIMESTAMP)",
    "INSERT INTO routers (id, org_id, project_id, name, vpc_id, created_at) VALUES (1, 1, 10, 'web', 1, "
    "CURRENT_TIMESTAMP)",
    "INSERT INTO router_subnets (router_id, subnet_id) VALUES (1, 1)",
    "INSERT INTO instances (id, org_id, project_id, name, uuid, image_id, ssh_key_id, vcpus, memory_mib, disk_gib, "
    "arch, status, created_at, updated_at) VALUES (1, 1, 10, 'web', 'u-1', 1, 1, 1, 64, 1, 'x86_64', 'running', "
    "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
    "INSERT INTO ports (id, org_id, project_id, vpc_id, subnet_id, name, mac, instance_id, device_index, created_at) "
    "VALUES (1, 1, 10, 1, 1, 'p', '52:54:00:00:00:01', 1, 0, CURRENT_TIMESTAMP)",
    "INSERT INTO volumes (id, org_id, project_id, name, size_gib, type, backend, status, created_at, updated_at) "
    "VALUES (1, 1, 10, 'web', 1, 'local', 'local', 'available', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
    "INSERT INTO volume_snapshots (id, org_id, project_id, volume_id, name, size_gib, status, created_at) "
    "VALUES (1, 1, 10, 1, 'web', 1, 'available', CURRENT_TIMESTAMP)",
]
NAMED = ("images", "ssh_keys", "vpcs", "subnets", "routers", "volumes", "volume_snapshots", "instances")


def counts(connection: Any) -> dict[str, int]:
    return {table: connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
            for table in (*NAMED, "ports", "router_subnets")}


def test_0015_makes_names_unique_per_project_and_back_keeping_every_row(empty_database_url: str) -> None:
    upgrade(empty_database_url, "0014")
    engine = make_engine(empty_database_url)
    try:
        with engine.begin() as connection:
            for statement in ROWS:
                connection.execute(text(statement))
            if connection.dialect.name == "postgresql":  # the ids above were given: their sequences move past them
                for table in (*NAMED, "ports"):
                    connection.execute(text(f"SELECT setval('{table}_id_seq', (SELECT max(id) FROM {table}))"))
            before = counts(connection)
        upgrade(empty_database_url)
        with engine.connect() as connection:
            assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "0015"
            assert counts(connection) == before
            # Nothing that references the copied tables was touched (no cascade, no SET NULL).
            assert tuple(connection.execute(text("SELECT image_id, ssh_key_id FROM instances")).one()) == (1, 1)
            assert connection.execute(text("SELECT subnet_id FROM ports")).scalar_one() == 1
            if connection.dialect.name == "sqlite":
                assert connection.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
                assert connection.execute(text("PRAGMA foreign_key_check")).all() == []
                assert connection.execute(text("PRAGMA integrity_check")).scalar_one() == "ok"
                # A deleted image's id is still never given again (AUTOINCREMENT's mark was kept).
                assert connection.execute(text("SELECT seq FROM sqlite_sequence WHERE name = 'images'")
                                          ).scalar_one() == 2
        # Another project may now hold the same names; the same project still may not.
        with engine.begin() as connection:
            for table in ("vpcs", "images"):
                columns = {"vpcs": "(org_id, project_id, name, mtu, domain, generation, created_at) "
                                   "VALUES (1, {p}, 'web', 1450, 'd', 0, CURRENT_TIMESTAMP)",
                           "images": "(org_id, project_id, name, arch, disk_format, status, size_bytes, created_at) "
                                     "VALUES (1, {p}, 'web', 'x86_64', 'raw', 'active', 0, CURRENT_TIMESTAMP)"}[table]
                connection.execute(text(f"INSERT INTO {table} " + columns.format(p=11)))
            connection.execute(text(
                "INSERT INTO instances (org_id, project_id, name, uuid, vcpus, memory_mib, disk_gib, arch, status, "
                "created_at, updated_at) VALUES (1, 11, 'web', 'u-2', 1, 64, 1, 'x86_64', 'running', "
                "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
        with pytest.raises(IntegrityError), engine.begin() as connection:
            connection.execute(text("INSERT INTO vpcs (org_id, project_id, name, mtu, domain, generation, created_at) "
                                    "VALUES (1, 11, 'web', 1450, 'd', 0, CURRENT_TIMESTAMP)"))
        with pytest.raises(IntegrityError), engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO instances (org_id, project_id, name, uuid, vcpus, memory_mib, disk_gib, arch, status, "
                "created_at, updated_at) VALUES (1, 11, 'web', 'u-3', 1, 64, 1, 'x86_64', 'building', "
                "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
        # The downgrade refuses while two projects share a name, naming them ...
        with pytest.raises(RuntimeError) as refused:
            downgrade(empty_database_url, "0014")
        assert "vpcs 'web' (2 in organisation 1)" in str(refused.value)
        assert "instances 'web' (2 in organisation 1)" in str(refused.value)
        with engine.connect() as connection:
            assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "0015"
        # ... and goes down once they are renamed, with every row, unique per organisation again.
        with engine.begin() as connection:
            for table in ("vpcs", "images", "instances"):
                connection.execute(text(f"UPDATE {table} SET name = 'web2' WHERE project_id = 11"))
        downgrade(empty_database_url, "0014")
        with engine.connect() as connection:
            assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "0014"
            assert counts(connection)["vpcs"] == before["vpcs"] + 1
            assert tuple(connection.execute(text("SELECT image_id, ssh_key_id FROM instances WHERE id = 1")).one()) \
                == (1, 1)
            if connection.dialect.name == "sqlite":
                assert connection.execute(text("PRAGMA foreign_key_check")).all() == []
        with pytest.raises(IntegrityError), engine.begin() as connection:
            connection.execute(text("INSERT INTO vpcs (org_id, project_id, name, mtu, domain, generation, created_at) "
                                    "VALUES (1, 11, 'web', 1450, 'd', 0, CURRENT_TIMESTAMP)"))
    finally:
        engine.dispose()
