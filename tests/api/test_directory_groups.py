"""Directory groups onto local groups (issue 14), against the real slapd and OpenID provider the
identity tests start (tests/identityfixtures.py): an organisation's admin maps a directory's
group onto a local group, and at each sign-in the user's membership of the mapped local groups
is what the directory says (added, removed), so a role the local group holds on a project
reaches them; an admin's own memberships stay; with no role but a mapped group, a user joins for
the organisation's projects only."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import Api
from tests.api.test_ldap import login, regroup  # noqa: F401  (regroup: a fixture)
from tests.api.test_oidc import sign_in_as
from tests.identityfixtures import GROUPS, LOCAL_PASSWORD, OidcProvider, Slapd, organisation_with, run_cli, serve

API = "/api/v1"
PROJECT = "X-CloudLand-Project"
USERS, ADMINS = f"cn=cloud-users,{GROUPS}", f"cn=cloud-admins,{GROUPS}"


def ok(reply: Any, status: int = 200) -> Any:
    assert reply.status_code == status, reply.text
    return reply.json() if status != 204 else None


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def local_groups(api: Api, owner: dict[str, str]) -> dict[str, int]:
    """The organisation's groups ``devs`` (admin on project ``dev``) and ``ops`` (no role), by name."""
    dev = ok(api.client.post(f"{API}/projects", json={"name": "dev"}, headers=owner), 201)
    made = {}
    for name in ("devs", "ops"):
        made[name] = ok(api.client.post(f"{API}/groups", json={"name": name}, headers=owner), 201)["id"]
    ok(api.client.put(f"{API}/groups/{made['devs']}/projects/{dev['id']}", json={"role": "admin"}, headers=owner))
    return made


def members(api: Api, owner: dict[str, str], group: int) -> set[str]:
    return {m["username"] for m in ok(api.client.get(f"{API}/groups/{group}", headers=owner))["members"]}


def map_group(api: Api, owner: dict[str, str], directory: str, name: str, group: str) -> dict[str, Any]:
    return ok(api.client.post(f"{API}/directory-groups", json={"directory": directory, "name": name, "group": group},
                              headers=owner), 201)


def sign_in(api: Api, uid: str, slapd: Slapd) -> dict[str, str]:
    reply = login(api, uid, slapd.passwords[uid])
    assert reply.status_code == 200, reply.text
    return bearer(reply.json()["token"])


def test_ldap_groups_set_local_memberships_at_each_sign_in(api: Api, admin_headers: dict[str, str], slapd: Slapd,
                                                           regroup: Any) -> None:  # noqa: F811
    organisation_with(api.client, admin_headers, "acme", "ldap", slapd.ldap_settings())
    owner = bearer(ok(login(api, "acme-admin", LOCAL_PASSWORD))["token"])
    groups = local_groups(api, owner)
    devs = map_group(api, owner, "ldap", USERS, "devs")
    assert (devs["directory"], devs["name"], devs["group"], devs["group_id"]) == ("ldap", USERS, "devs", groups["devs"])
    map_group(api, owner, "ldap", "CLOUD-ADMINS", "ops")  # a group's name (cn) works too, in any case
    again = api.client.post(f"{API}/directory-groups", json={"directory": "ldap", "name": USERS.upper(),
                                                             "group": "devs"}, headers=owner)
    assert again.status_code == 409 and "already mapped onto group 'devs'" in again.json()["error"]["message"]
    listed = ok(api.client.get(f"{API}/directory-groups", params={"directory": "ldap"}, headers=owner))["items"]
    assert [(m["name"], m["group"]) for m in listed] == [(USERS, "devs"), ("CLOUD-ADMINS", "ops")]

    # bob (cloud-users: member of acme) is in devs from his first sign-in, so admin of project dev.
    bob = sign_in(api, "bob", slapd)
    assert members(api, owner, groups["devs"]) == {"bob@acme"} and members(api, owner, groups["ops"]) == set()
    vpc = ok(api.client.post(f"{API}/vpcs", json={"name": "v"}, headers=bob | {PROJECT: "dev"}), 201)
    ok(api.client.delete(f"{API}/vpcs/{vpc['id']}", headers=bob | {PROJECT: "dev"}), 204)
    mine = ok(api.client.post(f"{API}/vpcs", json={"name": "v"}, headers=bob), 201)
    assert api.client.delete(f"{API}/vpcs/{mine['id']}", headers=bob).status_code == 403  # a member in default

    # alice moves from cloud-admins to cloud-users: at her next sign-in she leaves ops, joins devs.
    sign_in(api, "alice", slapd)
    assert members(api, owner, groups["ops"]) == {"alice@acme"}
    regroup("alice", "cloud-admins", add=False)
    regroup("alice", "cloud-users", add=True)
    assert members(api, owner, groups["ops"]) == {"alice@acme"}  # the directory is asked at sign-in only
    sign_in(api, "alice", slapd)
    assert members(api, owner, groups["ops"]) == set()
    assert members(api, owner, groups["devs"]) == {"alice@acme", "bob@acme"}

    # An admin's own membership is never the directory's to take away, even where a mapping made it.
    alice = ok(api.client.get(f"{API}/me", headers=sign_in(api, "alice", slapd)))["user_id"]
    ok(api.client.put(f"{API}/groups/{groups['devs']}/members/{alice}", headers=owner))
    bob_id = ok(api.client.get(f"{API}/me", headers=bob))["user_id"]
    ok(api.client.put(f"{API}/groups/{groups['ops']}/members/{bob_id}", headers=owner))
    regroup("alice", "cloud-users", add=False)
    regroup("alice", "cloud-admins", add=True)
    sign_in(api, "alice", slapd)
    sign_in(api, "bob", slapd)
    assert members(api, owner, groups["devs"]) == {"alice@acme", "bob@acme"}
    assert members(api, owner, groups["ops"]) == {"alice@acme", "bob@acme"}

    # A forgotten mapping takes what it made at the next sign-in.
    ok(api.client.delete(f"{API}/directory-groups/{devs['id']}", headers=owner), 204)
    sign_in(api, "bob", slapd)
    assert members(api, owner, groups["devs"]) == {"alice@acme"}
    # The map is the organisation admins': a member reads it, changes nothing.
    assert api.client.post(f"{API}/directory-groups", json={"directory": "ldap", "name": USERS, "group": "devs"},
                           headers=bob).status_code == 403
    assert api.client.delete(f"{API}/directory-groups/{devs['id']}", headers=owner).status_code == 404


def test_a_mapped_group_alone_lets_a_user_in_for_its_projects_only(api: Api, admin_headers: dict[str, str],
                                                                   slapd: Slapd) -> None:
    """cloud-users maps to no role here, only onto devs: bob signs in, acts in project dev as its
    admin through devs, and holds nothing in the organisation's other projects."""
    organisation_with(api.client, admin_headers, "acme", "ldap", slapd.ldap_settings(roles={"cloud-admins": "admin"}))
    owner = bearer(ok(login(api, "acme-admin", LOCAL_PASSWORD))["token"])
    groups = local_groups(api, owner)
    refused = login(api, "bob", slapd.passwords["bob"])
    assert refused.status_code == 401 and "to a role or to a local group" in refused.json()["error"]["message"]
    map_group(api, owner, "ldap", USERS, "devs")
    bob = sign_in(api, "bob", slapd)
    assert members(api, owner, groups["devs"]) == {"bob@acme"}
    ok(api.client.post(f"{API}/vpcs", json={"name": "v"}, headers=bob | {PROJECT: "dev"}), 201)
    assert api.client.get(f"{API}/vpcs", headers=bob | {PROJECT: "default"}).status_code == 403
    assert [p["name"] for p in ok(api.client.get(f"{API}/projects", headers=bob))["items"]] == ["dev"]


def test_a_map_needs_its_directory_and_a_local_group_of_the_organisation(api: Api, admin_headers: dict[str, str],
                                                                         slapd: Slapd) -> None:
    organisation_with(api.client, admin_headers, "acme", "ldap", slapd.ldap_settings())
    owner = bearer(ok(login(api, "acme-admin", LOCAL_PASSWORD))["token"])
    ok(api.client.post(f"{API}/groups", json={"name": "devs"}, headers=owner), 201)
    oidc = api.client.post(f"{API}/directory-groups", json={"directory": "oidc", "name": "x", "group": "devs"},
                           headers=owner)
    assert oidc.status_code == 404 and "has no OpenID provider configured" in oidc.json()["error"]["message"]
    missing = api.client.post(f"{API}/directory-groups", json={"directory": "ldap", "name": "x", "group": "nope"},
                              headers=owner)
    assert missing.status_code == 404 and "group 'nope' not found" in missing.json()["error"]["message"]
    bad = api.client.post(f"{API}/directory-groups", json={"directory": "nis", "name": "x", "group": "devs"},
                          headers=owner)
    assert bad.status_code == 422


def test_the_groups_claim_sets_local_memberships_at_each_sign_in(api: Api, admin_headers: dict[str, str],
                                                                 oidc_provider: OidcProvider) -> None:
    organisation_with(api.client, admin_headers, "acme", "oidc", oidc_provider.oidc_settings())
    owner = bearer(ok(api.client.post(f"{API}/login", json={"username": "acme-admin", "password": LOCAL_PASSWORD,
                                                            "organisation": "acme"}))["token"])
    groups = local_groups(api, owner)
    map_group(api, owner, "oidc", "ops-team", "ops")
    map_group(api, owner, "oidc", "cloud-users", "devs")
    before = dict(oidc_provider.accounts)
    try:
        with serve(api.app) as url:
            sign_in_as(url, "alice")
            bob = sign_in_as(url, "bob")
            assert members(api, owner, groups["ops"]) == set()
            assert members(api, owner, groups["devs"]) == {"bob@acme"}
            ok(api.client.post(f"{API}/vpcs", json={"name": "v"}, headers=bearer(bob["token"]) | {PROJECT: "dev"}),
               201)
            oidc_provider.set_accounts({**before, "alice": {**before["alice"], "groups": ["cloud-admins", "ops-team"]}})
            sign_in_as(url, "alice")
            assert members(api, owner, groups["ops"]) == {"alice@acme"}
            oidc_provider.set_accounts(before)
            # The provider's ID token carries no nonce or jti: alice's claims as at her first
            # sign-in, in the same second, make the same token, which the API exchanges only once.
            time.sleep(1.1)
            sign_in_as(url, "alice")
            assert members(api, owner, groups["ops"]) == set()
    finally:
        oidc_provider.set_accounts(before)


@pytest.mark.parametrize("directory", ["ldap", "oidc"])
def test_only_the_directory_that_made_a_membership_takes_it_away(api: Api, directory: str) -> None:
    """The service alone, on the real database: ``sync`` adds what ``mapped`` names and takes away
    only what the same directory made."""
    from cloudland_api.models import Group, GroupMember, Membership, Organisation, Role, User
    from cloudland_api.services import directory_groups

    other = "oidc" if directory == "ldap" else "ldap"
    with api.app.state.write_sessions() as session:
        org = Organisation(name="acme")
        user = User(username="u", password_hash="x")
        session.add_all([org, user])
        session.flush()
        session.add(Membership(user_id=user.id, org_id=org.id, role=Role.member))
        mine, theirs, admins = (Group(org_id=org.id, name=n) for n in ("mine", "theirs", "admins"))
        session.add_all([mine, theirs, admins])
        session.flush()
        session.add_all([GroupMember(group_id=theirs.id, user_id=user.id, directory=other),
                         GroupMember(group_id=admins.id, user_id=user.id)])
        directory_groups.sync(session, user.id, org.id, directory, {mine.id})
        session.commit()
        held = dict(session.query(GroupMember.group_id, GroupMember.directory).filter_by(user_id=user.id).all())
        assert held == {mine.id: directory, theirs.id: other, admins.id: None}
        directory_groups.sync(session, user.id, org.id, directory, set())
        session.commit()
        held = dict(session.query(GroupMember.group_id, GroupMember.directory).filter_by(user_id=user.id).all())
        assert held == {theirs.id: other, admins.id: None}


def test_the_readme_commands_through_the_cli(api: Api, admin_headers: dict[str, str], slapd: Slapd,
                                             oidc_provider: OidcProvider, tmp_path: Path) -> None:
    """README, "Sign in with your directory": ``directory group map``, ``list`` and ``unmap`` as
    an organisation's admin, then a sign-in that follows the map."""
    org = organisation_with(api.client, admin_headers, "acme", "ldap", slapd.ldap_settings())
    ok(api.client.put(f"{API}/organisations/{org}/oidc", json=oidc_provider.oidc_settings(), headers=admin_headers))
    owner = bearer(ok(login(api, "acme-admin", LOCAL_PASSWORD))["token"])
    groups = local_groups(api, owner)
    config = tmp_path / "cli.json"
    with serve(api.app) as url:
        done = run_cli(config, "login", "--endpoint", url, "--organisation", "acme", "--username", "acme-admin",
                       "--password-stdin", stdin=LOCAL_PASSWORD + "\n")
        assert done.exit_code == 0, done.output
        mapped = run_cli(config, "directory", "group", "map", USERS, "--group", "devs")
        assert mapped.exit_code == 0 and f"ldap group {USERS} maps onto group devs" in mapped.output, mapped.output
        oidc = run_cli(config, "directory", "group", "map", "ops-team", "--group", "ops", "--directory", "oidc",
                       "--json")
        assert oidc.exit_code == 0, oidc.output
        listed = run_cli(config, "directory", "group", "list", "--json")
        assert [(m["directory"], m["name"], m["group"]) for m in json.loads(listed.output)["items"]] == [
            ("ldap", USERS, "devs"), ("oidc", "ops-team", "ops")]
        assert run_cli(config, "directory", "group", "map", "x", "--group", "devs", "--directory", "nis"
                       ).exit_code == 2
        sign_in(api, "bob", slapd)
        assert members(api, owner, groups["devs"]) == {"bob@acme"}
        gone = run_cli(config, "directory", "group", "unmap", str(json.loads(oidc.output)["id"]))
        assert gone.exit_code == 0, gone.output
        listed = run_cli(config, "directory", "group", "list")
        assert "ops-team" not in listed.output and USERS in listed.output
