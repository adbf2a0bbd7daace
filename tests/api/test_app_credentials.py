"""Application credentials (issue 14): created, used by plain HTTP and by the CLI, scoped to a role
no higher than the creator's, expired, revoked, each with the expected result; the secret is
shown once and appears nowhere in the database or the logs."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from cloudland_api.models import AppCredential, Role
from tests.api.conftest import Api
from tests.identityfixtures import run_cli, serve

CREDENTIALS = "/api/v1/app-credentials"
FLAVOR = {"name": "small", "vcpus": 1, "memory_mib": 512, "disk_gib": 1}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def create(api: Api, headers: dict[str, str], **body: Any) -> Any:
    return api.client.post(CREDENTIALS, headers=headers, json={"name": "ci", **body})


def test_a_credential_acts_for_its_creator_with_its_role(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    member = api.add_user("mia", "acme", Role.member)
    made = create(api, member)
    assert made.status_code == 201, made.text
    secret = made.json()["secret"]
    assert secret.startswith(f"cla_{made.json()['id']}_") and made.json()["role"] == "member"
    assert api.client.get("/api/v1/me", headers=bearer(secret)).json()["username"] == "mia"
    assert api.client.post("/api/v1/flavors", headers=bearer(secret), json=FLAVOR).status_code == 201
    # A reader's credential reads and changes nothing.
    reader = create(api, member, name="dashboard", role="reader").json()["secret"]
    assert api.client.get("/api/v1/flavors", headers=bearer(reader)).status_code == 200
    refused = api.client.post("/api/v1/flavors", headers=bearer(reader), json={**FLAVOR, "name": "x"})
    assert refused.status_code == 403 and "role 'reader'" in refused.text
    # Never above the creator's role.
    above = create(api, member, role="admin")
    assert above.status_code == 403 and "above yours" in above.text
    # Listed without secrets; the secret is nowhere in the database or the logs.
    listed = api.client.get(CREDENTIALS, headers=member).json()["items"]
    assert [c["name"] for c in listed] == ["ci", "dashboard"] and all("secret" not in c for c in listed)
    with api.app.state.sessions() as session:
        rows = repr([vars(c) for c in session.scalars(select(AppCredential))])
    assert secret.split("_")[2] not in rows and reader.split("_")[2] not in rows
    assert secret not in caplog.text and reader not in caplog.text


def test_expired_revoked_and_orphaned_credentials_are_refused_saying_why(api: Api,
                                                                        admin_headers: dict[str, str]) -> None:
    member = api.add_user("mia", "admin", Role.member)
    secrets_ = [create(api, member, name=f"c{i}").json() for i in range(3)]
    expired, revoked, kept = secrets_
    with api.app.state.sessions() as session:  # an hour later, for the first one
        session.execute(update(AppCredential).where(AppCredential.id == expired["id"])
                        .values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
        session.commit()
    reply = api.client.get("/api/v1/me", headers=bearer(expired["secret"]))
    assert reply.status_code == 401 and f"application credential {expired['id']} expired" in reply.text
    assert api.client.delete(f"{CREDENTIALS}/{revoked['id']}", headers=member).status_code == 204
    assert api.client.get("/api/v1/me", headers=bearer(revoked["secret"])).status_code == 401
    assert api.client.delete(f"{CREDENTIALS}/{revoked['id']}", headers=member).status_code == 404
    # A forged secret for a real id, and garbage, are refused alike.
    forged = kept["secret"][:-4] + "0000"
    assert api.client.get("/api/v1/me", headers=bearer(forged)).status_code == 401
    assert api.client.get("/api/v1/me", headers=bearer("cla_1_zz")).status_code == 401
    # It follows its creator: demoted, it is demoted; out of the organisation, it ends.
    user_id = api.client.get("/api/v1/me", headers=bearer(kept["secret"])).json()["user_id"]
    assert api.client.patch(f"/api/v1/memberships/{user_id}", headers=admin_headers,
                            json={"role": "reader"}).status_code == 200
    assert api.client.get("/api/v1/me", headers=bearer(kept["secret"])).json()["role"] == "reader"
    api.add_user("mia-elsewhere", "beta", Role.admin)
    assert api.client.post("/api/v1/memberships", headers=api.headers("mia-elsewhere", "pw-" + "x" * 8),
                           json={"username": "mia", "role": "member"}).status_code == 201
    assert api.client.delete(f"/api/v1/memberships/{user_id}", headers=admin_headers).status_code == 204
    assert api.client.get("/api/v1/me", headers=bearer(kept["secret"])).status_code == 401


def test_a_credential_cannot_make_another_log_out_or_change_a_password(api: Api) -> None:
    member = api.add_user("mia", "acme", Role.member)
    secret = create(api, member).json()["secret"]
    for method, path, body in [("post", CREDENTIALS, {"name": "again"}), ("post", "/api/v1/logout", None),
                               ("post", "/api/v1/me/password", {"current_password": "pw-" + "x" * 8,
                                                                "new_password": "something-new"})]:
        reply = api.client.request(method, path, headers=bearer(secret), json=body)
        assert reply.status_code == 400, (path, reply.text)
    assert api.client.get("/api/v1/me", headers=bearer(secret)).status_code == 200


@pytest.mark.parametrize("body", [{"name": ""}, {"name": "x", "role": "owner"}, {"name": "x", "lifetime_s": 10},
                                  {"name": "x", "lifetime_s": 10**9}, {"name": "x", "secret": "mine"}])
def test_bad_requests_are_a_4xx(api: Api, body: dict[str, Any]) -> None:
    member = api.add_user("mia", "acme", Role.member)
    assert api.client.post(CREDENTIALS, headers=member, json=body).status_code == 422


def test_the_cli_uses_a_credential_as_its_token(api: Api, tmp_path: Path) -> None:
    member = api.add_user("mia", "acme", Role.member)
    secret = create(api, member).json()["secret"]
    api.client.post("/api/v1/flavors", headers=member, json=FLAVOR)
    with serve(api.app) as url:
        done = run_cli(tmp_path / "cli.json", "flavor", "list", "--json",
                       env={"CLOUDLAND_ENDPOINT": url, "CLOUDLAND_TOKEN": secret})
        assert done.exit_code == 0, done.output
        assert '"small"' in done.output
        api.client.delete(f"{CREDENTIALS}/{secret.split('_')[1]}", headers=member)
        refused = run_cli(tmp_path / "cli.json", "flavor", "list", env={"CLOUDLAND_ENDPOINT": url,
                                                                        "CLOUDLAND_TOKEN": secret})
    assert refused.exit_code != 0 and "revoked" in refused.output


def test_the_cli_creates_lists_and_revokes_them(api: Api, tmp_path: Path) -> None:
    import json

    api.add_user("mia", "acme", Role.member)
    config = tmp_path / "cli.json"
    with serve(api.app) as url:
        done = run_cli(config, "login", "--endpoint", url, "--username", "mia", "--password-stdin",
                       stdin="pw-" + "x" * 8 + "\n")
        assert done.exit_code == 0, done.output
        made = run_cli(config, "credential", "create", "backup", "--role", "reader", "--json")
        assert made.exit_code == 0, made.output
        credential = json.loads(made.output)
        listed = run_cli(config, "credential", "list", "--json")
        assert [c["name"] for c in json.loads(listed.output)["items"]] == ["backup"]
        assert credential["secret"] not in listed.output
        used = run_cli(tmp_path / "script.json", "whoami", "--json",
                       env={"CLOUDLAND_ENDPOINT": url, "CLOUDLAND_TOKEN": credential["secret"]})
        assert json.loads(used.output)["role"] == "reader"
        assert run_cli(config, "credential", "revoke", str(credential["id"])).exit_code == 0
        used = run_cli(tmp_path / "script.json", "whoami",
                       env={"CLOUDLAND_ENDPOINT": url, "CLOUDLAND_TOKEN": credential["secret"]})
        assert used.exit_code != 0 and "revoked" in used.output
