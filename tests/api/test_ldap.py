"""Sign-in through an organisation's LDAP directory (issue 14), against a real slapd started by
the tests (tests/identityfixtures.py): roles from groups at every sign-in, users provisioned just
in time, the bind password kept secret, a directory that is down a clear 503 while the local
break-glass admin still signs in."""

from __future__ import annotations

import logging
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from cloudland_api.models import Directory, User
from tests.api.conftest import Api
from tests.identityfixtures import GROUPS, LOCAL_PASSWORD, PEOPLE, Slapd, organisation_with, run_cli, serve


@pytest.fixture
def acme(api: Api, admin_headers: dict[str, str], slapd: Slapd) -> int:
    """Organisation acme, signing its people in against ``slapd``."""
    return organisation_with(api.client, admin_headers, "acme", "ldap", slapd.ldap_settings())


def login(api: Api, username: str, password: str, organisation: str = "acme") -> Any:
    return api.client.post("/api/v1/login", json={"username": username, "password": password,
                                                  "organisation": organisation})


def me(api: Api, token: str) -> Any:
    return api.client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})


@pytest.fixture
def regroup(slapd: Slapd) -> Iterator[Any]:
    """``regroup(uid, group, add)``: change a group of the directory; every change is undone after."""
    from ldap3 import MODIFY_ADD, MODIFY_DELETE

    undo: list[tuple[str, str, bool]] = []

    def change(uid: str, group: str, add: bool) -> None:
        with slapd.connect() as ldap:
            ok = ldap.modify(f"cn={group},{GROUPS}", {"member": [(MODIFY_ADD if add else MODIFY_DELETE,
                                                                  [f"uid={uid},{PEOPLE}"])]})
            assert ok, ldap.result
        undo.append((uid, group, not add))

    yield change
    for uid, group, add in reversed(undo):
        with slapd.connect() as ldap:
            ldap.modify(f"cn={group},{GROUPS}", {"member": [(MODIFY_ADD if add else MODIFY_DELETE,
                                                              [f"uid={uid},{PEOPLE}"])]})


def test_groups_map_to_roles_and_users_are_provisioned_at_first_sign_in(api: Api, acme: int, slapd: Slapd) -> None:
    alice = login(api, "alice", slapd.passwords["alice"])
    assert alice.status_code == 200, alice.text
    account = me(api, alice.json()["token"]).json()
    assert (account["username"], account["organisation"], account["role"], account["operator"]) == (
        "alice@acme", "acme", "admin", False)
    bob = login(api, "bob", slapd.passwords["bob"])
    assert bob.status_code == 200, bob.text
    assert me(api, bob.json()["token"]).json()["role"] == "member"
    with api.app.state.sessions() as session:
        users = {u.username: u for u in session.scalars(select(User).where(User.source == "ldap"))}
    assert set(users) == {"alice@acme", "bob@acme"}
    assert users["alice@acme"].external_id == f"{acme}:uid=alice,{PEOPLE}"
    # The organisation's admins see them like any member; a second sign-in makes no second user.
    assert login(api, "alice", slapd.passwords["alice"]).status_code == 200
    listed = api.client.get("/api/v1/users", headers={"Authorization": f"Bearer {alice.json()['token']}"}).json()
    assert sorted((u["username"], u["role"]) for u in listed["items"]) == [
        ("acme-admin", "admin"), ("alice@acme", "admin"), ("bob@acme", "member")]


def test_wrong_passwords_unknown_users_and_filter_injection_are_one_401(api: Api, acme: int, slapd: Slapd) -> None:
    for username, password in [("alice", "wrong-password"), ("nobody", "x"), ("*", slapd.passwords["alice"]),
                               ("alice)(uid=*", slapd.passwords["alice"]), ("bob", slapd.passwords["alice"])]:
        reply = login(api, username, password)
        assert reply.status_code == 401, (username, reply.text)
        assert reply.json()["error"]["message"] == "invalid username or password"
    # A directory user never signs in with a local password, under the name CloudLand gave them.
    assert login(api, "alice", slapd.passwords["alice"]).status_code == 200
    assert login(api, "alice@acme", slapd.passwords["alice"]).status_code == 401
    assert login(api, "alice@acme", "!directory", organisation="admin").status_code == 401
    # The audit trail has each try, the failed ones too, under the username given and acme.
    trail = api.client.get("/api/v1/audit", headers=api.headers(api.admin.username, api.admin.password),
                           params={"username": "alice", "limit": 10}).json()["items"]
    assert [(e["status"], e["org_id"]) for e in reversed(trail)] == [(401, acme), (200, acme)]


def test_a_user_in_no_mapped_group_is_refused_saying_why(api: Api, acme: int, slapd: Slapd) -> None:
    reply = login(api, "carol", slapd.passwords["carol"])
    assert reply.status_code == 401
    assert "'carol' is in no group that organisation 'acme'" in reply.json()["error"]["message"]


def test_group_changes_apply_at_the_next_sign_in(api: Api, acme: int, slapd: Slapd, regroup: Any) -> None:
    first = login(api, "alice", slapd.passwords["alice"]).json()["token"]
    assert me(api, first).json()["role"] == "admin"
    regroup("alice", "cloud-admins", add=False)
    regroup("alice", "cloud-users", add=True)
    assert me(api, first).json()["role"] == "admin"  # the directory is asked at sign-in, not per request
    second = login(api, "alice", slapd.passwords["alice"])
    assert second.status_code == 200, second.text
    assert me(api, second.json()["token"]).json()["role"] == "member"
    assert me(api, first).json()["role"] == "member"  # the role is the membership's: old tokens follow
    regroup("alice", "cloud-users", add=False)
    third = login(api, "alice", slapd.passwords["alice"])
    assert third.status_code == 401 and "no group" in third.json()["error"]["message"]
    # Out of every mapped group: the membership is gone, and every token of the user with it.
    assert me(api, second.json()["token"]).status_code == 401
    regroup("alice", "cloud-admins", add=True)
    assert me(api, login(api, "alice", slapd.passwords["alice"]).json()["token"]).json()["role"] == "admin"


def test_directory_down_is_a_503_naming_it_and_local_admins_still_sign_in(api: Api, acme: int,
                                                                           slapd: Slapd) -> None:
    with slapd.stopped():
        started = time.monotonic()
        reply = login(api, "alice", slapd.passwords["alice"])
        took = time.monotonic() - started
        assert reply.status_code == 503, reply.text
        message = reply.json()["error"]["message"]
        assert f"organisation 'acme''s LDAP directory {slapd.url} did not answer" in message
        assert slapd.passwords["cloudland"] not in message
        assert took < 10  # refused at once (the timeout is 3 s; a loaded machine gets slack)
        # Break-glass: local accounts sign in without the directory.
        assert login(api, "acme-admin", LOCAL_PASSWORD).status_code == 200
        assert login(api, api.admin.username, api.admin.password, organisation="admin").status_code == 200
    assert login(api, "alice", slapd.passwords["alice"]).status_code == 200


def test_a_directory_user_cannot_take_a_local_users_name(api: Api, acme: int, slapd: Slapd) -> None:
    # The directory has an "admin" too: the name is a local user's, so the local password decides.
    reply = login(api, "admin", slapd.passwords["admin"])
    assert reply.status_code == 401
    assert login(api, "admin", slapd.passwords["admin"], organisation="admin").status_code == 401


def test_a_refused_service_bind_is_a_503_naming_the_setting(api: Api, acme: int, slapd: Slapd,
                                                            admin_headers: dict[str, str]) -> None:
    wrong = slapd.ldap_settings(bind_password="not-the-service-password")
    assert api.client.put(f"/api/v1/organisations/{acme}/ldap", headers=admin_headers, json=wrong).status_code == 200
    reply = login(api, "alice", slapd.passwords["alice"])
    assert reply.status_code == 503
    assert "refused CloudLand's bind as 'cn=cloudland,ou=services,dc=example,dc=org'" in reply.json()["error"]["message"]


def test_settings_are_the_operators_and_the_bind_password_stays_secret(
        api: Api, acme: int, slapd: Slapd, admin_headers: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = slapd.passwords["cloudland"]
    path = f"/api/v1/organisations/{acme}/ldap"
    assert api.client.put(path, headers=admin_headers, json=slapd.ldap_settings()).status_code == 200
    shown = api.client.get(path, headers=admin_headers)
    assert shown.status_code == 200 and shown.json()["bind_dn"].startswith("cn=cloudland")
    assert "bind_password" not in shown.json() and secret not in shown.text
    file = Path(api.settings.state_dir) / "directories" / f"ldap-org{acme}.password"
    assert file.read_text() == secret
    assert stat.S_IMODE(file.stat().st_mode) == 0o600 and stat.S_IMODE(file.parent.stat().st_mode) == 0o700
    with api.app.state.sessions() as session:
        assert secret not in repr([d.settings for d in session.scalars(select(Directory))])
    assert login(api, "alice", slapd.passwords["alice"]).status_code == 200
    assert secret not in caplog.text and slapd.passwords["alice"] not in caplog.text
    # An organisation's own admin configures nothing: operators do.
    acme_admin = {"Authorization": f"Bearer {login(api, 'acme-admin', LOCAL_PASSWORD).json()['token']}"}
    assert api.client.put(path, headers=acme_admin, json=slapd.ldap_settings()).status_code == 403
    assert api.client.get(path, headers=acme_admin).status_code == 403
    # Removing it erases the secret; the organisation's people can no longer sign in through it.
    assert api.client.delete(path, headers=admin_headers).status_code == 204
    assert not file.exists()
    assert api.client.get(path, headers=admin_headers).status_code == 404
    assert login(api, "alice", slapd.passwords["alice"]).status_code == 401


@pytest.mark.parametrize(("change", "field"), [
    ({"url": "http://127.0.0.1:389"}, "url"),
    ({"user_filter": "(uid=alice)"}, "user_filter"),
    ({"group_filter": "(member={password})"}, "group_filter"),
    ({"roles": {}}, "roles"),
    ({"roles": {"cloud-admins": "root"}}, "roles"),
    ({"timeout_s": 0}, "timeout_s"),
    ({"bind_password": ""}, "bind_password"),
    ({"extra": 1}, "extra"),
])
def test_bad_settings_are_a_4xx_naming_the_field(api: Api, acme: int, slapd: Slapd, admin_headers: dict[str, str],
                                                 change: dict[str, Any], field: str) -> None:
    reply = api.client.put(f"/api/v1/organisations/{acme}/ldap", headers=admin_headers,
                           json=slapd.ldap_settings(**change))
    assert 400 <= reply.status_code < 500, reply.text
    assert field in reply.text
    assert api.client.put("/api/v1/organisations/999999/ldap", headers=admin_headers,
                          json=slapd.ldap_settings()).status_code == 404


def test_cloudland_login_with_directory_credentials(api: Api, acme: int, slapd: Slapd, tmp_path: Path) -> None:
    config = tmp_path / "cli.json"
    with serve(api.app) as url:
        done = run_cli(config, "login", "--endpoint", url, "--organisation", "acme", "--username", "alice",
                       "--password-stdin", stdin=slapd.passwords["alice"] + "\n")
        assert done.exit_code == 0, done.output
        who = run_cli(config, "whoami", "--json")
        assert who.exit_code == 0, who.output
        assert '"username": "alice@acme"' in who.output and '"role": "admin"' in who.output
        with slapd.stopped():
            down = run_cli(config, "login", "--organisation", "acme", "--username", "alice", "--password-stdin",
                           stdin=slapd.passwords["alice"] + "\n")
        assert down.exit_code != 0 and "LDAP directory" in down.output and "did not answer" in down.output


def test_operators_configure_it_with_the_cli_and_read_the_trail(api: Api, admin_headers: dict[str, str],
                                                                slapd: Slapd, tmp_path: Path) -> None:
    import json

    api.client.post("/api/v1/organisations", headers=admin_headers,
                    json={"name": "acme", "admin": {"username": "acme-admin", "password": LOCAL_PASSWORD}})
    settings = {k: v for k, v in slapd.ldap_settings().items() if k != "bind_password"}
    (tmp_path / "acme-ldap.json").write_text(json.dumps(settings))
    operator, alice = tmp_path / "operator.json", tmp_path / "alice.json"
    with serve(api.app) as url:
        done = run_cli(operator, "login", "--endpoint", url, "--credentials", str(api.admin.path))
        assert done.exit_code == 0, done.output
        done = run_cli(operator, "directory", "set", "acme", "ldap", "--settings", str(tmp_path / "acme-ldap.json"),
                       "--bind-password-stdin", stdin=slapd.passwords["cloudland"] + "\n")
        assert done.exit_code == 0 and f"signs in through its LDAP server {slapd.url}" in done.output, done.output
        shown = run_cli(operator, "directory", "show", "acme", "ldap", "--json")
        assert shown.exit_code == 0 and slapd.passwords["cloudland"] not in shown.output
        assert json.loads(shown.output)["roles"] == {"cloud-admins": "admin", "cloud-users": "member"}
        done = run_cli(alice, "login", "--endpoint", url, "--organisation", "acme", "--username", "alice",
                       "--password-stdin", stdin=slapd.passwords["alice"] + "\n")
        assert done.exit_code == 0, done.output
        # The row is written just after the answer (api/audit.py): give it a moment on a busy machine.
        deadline = time.monotonic() + 10
        while True:
            trail = run_cli(operator, "audit", "--json", "--username", "alice")
            assert trail.exit_code == 0, trail.output
            if json.loads(trail.output)["items"] or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert [(e["method"], e["path"], e["status"]) for e in json.loads(trail.output)["items"]] == [
            ("POST", "/api/v1/login", 200)]
        assert run_cli(operator, "directory", "remove", "acme", "ldap").exit_code == 0
        assert run_cli(operator, "directory", "show", "acme", "ldapx").exit_code == 2


def test_a_silent_directory_stalls_no_other_writer(api: Api, acme: int, slapd: Slapd,
                                                   admin_headers: dict[str, str]) -> None:
    """A directory that takes the connection and never answers: its sign-in waits for the timeout,
    and meanwhile other requests write (on SQLite, the write turn is not held while it waits)."""
    import socket
    import threading

    import httpx2 as httpx

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel completes the handshakes; nobody ever reads or answers
        # 8 s: long enough that the write below ends first even on a loaded machine.
        mute = slapd.ldap_settings(url=f"ldap://127.0.0.1:{silent.getsockname()[1]}", timeout_s=8.0)
        assert api.client.put(f"/api/v1/organisations/{acme}/ldap", headers=admin_headers, json=mute).status_code == 200
        with serve(api.app) as url:
            answers: list[httpx.Response] = []
            signing_in = threading.Thread(target=lambda: answers.append(httpx.post(
                f"{url}/api/v1/login", timeout=30,
                json={"username": "alice", "password": slapd.passwords["alice"], "organisation": "acme"})))
            signing_in.start()
            time.sleep(0.5)
            flavor = httpx.post(f"{url}/api/v1/flavors", headers=admin_headers, timeout=30,
                                json={"name": "meanwhile", "vcpus": 1, "memory_mib": 64, "disk_gib": 1})
            still_waiting = signing_in.is_alive()
            signing_in.join(timeout=30)
    assert flavor.status_code == 201, flavor.text
    assert still_waiting, "the sign-in ended before the write: the test proved nothing"
    assert answers[0].status_code == 503 and "did not answer" in answers[0].text


def test_tls_verifies_the_directorys_certificate(api: Api, acme: int, slapd: Slapd,
                                                 admin_headers: dict[str, str]) -> None:
    path = f"/api/v1/organisations/{acme}/ldap"
    for tls in ({"start_tls": True}, {"url": slapd.ldaps_url}):
        trusted = slapd.ldap_settings(ca_cert=slapd.ca_cert, **tls)
        assert api.client.put(path, headers=admin_headers, json=trusted).status_code == 200
        reply = login(api, "alice", slapd.passwords["alice"])
        assert reply.status_code == 200, (tls, reply.text)
        # Without the organisation's CA, the system's CAs do not know the server: no bind is sent.
        assert api.client.put(path, headers=admin_headers, json=slapd.ldap_settings(**tls)).status_code == 200
        reply = login(api, "alice", slapd.passwords["alice"])
        assert reply.status_code == 503, (tls, reply.text)
        assert "failed TLS verification (check its ca_cert)" in reply.json()["error"]["message"]
    assert api.client.get(path, headers=admin_headers).json()["ca_cert"] is None


def test_deleting_the_organisation_erases_its_directory(api: Api, acme: int, slapd: Slapd,
                                                       admin_headers: dict[str, str]) -> None:
    assert login(api, "alice", slapd.passwords["alice"]).status_code == 200
    secret = Path(api.settings.state_dir) / "directories" / f"ldap-org{acme}.password"
    assert secret.exists()
    assert api.client.delete(f"/api/v1/organisations/{acme}", headers=admin_headers).status_code == 204
    assert not secret.exists()
    with api.app.state.sessions() as session:
        assert list(session.scalars(select(Directory))) == []
        assert session.scalar(select(User).where(User.username == "alice@acme")) is None
