"""Tokens end when they should (issue 14): logout, a password change, the lifetime's ceiling; and
repeated failed sign-ins are slowed down per username and address (429 with Retry-After)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from cloudland_api.models import LoginFailure, Role
from cloudland_api.security import issue_token
from cloudland_api.services import identity
from cloudland_api.services.identity import Backoff
from tests.api.conftest import Api

LOGIN = "/api/v1/login"
FLAVORS = "/api/v1/flavors"
PASSWORD = "/api/v1/me/password"
PW = "pw-" + "x" * 8  # conftest's add_user


def token_headers(reply_json: dict) -> dict[str, str]:
    return {"Authorization": f"Bearer {reply_json['token']}"}


def sign_in(client: TestClient, username: str, password: str = PW, **extra: object) -> Any:
    return client.post(LOGIN, json={"username": username, "password": password, **extra})


def test_logout_ends_that_token_only(api: Api) -> None:
    first = api.add_user("bob", "acme", Role.member)
    second = api.headers("bob", PW)
    assert api.client.post("/api/v1/logout", headers=first).status_code == 204
    reply = api.client.get(FLAVORS, headers=first)
    assert reply.status_code == 401
    assert reply.json()["error"]["message"] == "token was revoked by a logout; log in again"
    assert api.client.post("/api/v1/logout", headers=first).status_code == 401
    assert api.client.get(FLAVORS, headers=second).status_code == 200


def test_a_password_change_ends_every_token_and_answers_a_new_one(api: Api) -> None:
    in_acme = api.add_user("bob", "acme", Role.member)
    carol = api.add_user("carol", "beta", Role.admin)
    assert api.client.post("/api/v1/memberships", json={"username": "bob"}, headers=carol).status_code == 201
    in_beta = token_headers(sign_in(api.client, "bob", organisation="beta").json())
    wrong = api.client.post(PASSWORD, json={"current_password": "nope", "new_password": "n" * 10}, headers=in_acme)
    assert wrong.status_code == 400 and wrong.json()["error"]["message"] == "current_password is not your password"
    same = api.client.post(PASSWORD, json={"current_password": PW, "new_password": PW}, headers=in_acme)
    assert same.status_code == 400 and "is the current password" in same.json()["error"]["message"]
    short = api.client.post(PASSWORD, json={"current_password": PW, "new_password": "short"}, headers=in_acme)
    assert short.status_code == 422 and "new_password" in short.json()["error"]["message"]
    changed = api.client.post(PASSWORD, json={"current_password": PW, "new_password": "new-" + PW}, headers=in_acme)
    assert changed.status_code == 200, changed.text
    for old in (in_acme, in_beta):
        reply = api.client.get(FLAVORS, headers=old)
        assert reply.status_code == 401 and "the password changed" in reply.json()["error"]["message"]
    assert api.client.get(FLAVORS, headers=token_headers(changed.json())).status_code == 200
    assert sign_in(api.client, "bob").status_code == 401
    assert sign_in(api.client, "bob", "new-" + PW).status_code == 200


def test_a_token_lives_as_asked_up_to_the_ceiling(api: Api) -> None:
    reply = sign_in(api.client, "admin", api.admin.password, lifetime_s=60)
    expires = datetime.fromisoformat(reply.json()["expires_at"])
    assert timedelta(seconds=50) < expires - datetime.now(UTC) <= timedelta(seconds=60)
    ceiling = api.settings.token_max_lifetime_s
    reply = sign_in(api.client, "admin", api.admin.password, lifetime_s=ceiling + 1)
    assert reply.status_code == 400
    assert reply.json()["error"]["message"] == (
        f"lifetime_s {ceiling + 1} is above the ceiling of {ceiling} s (CLOUDLAND_API_TOKEN_MAX_LIFETIME_S)")
    # A token issued before the ceiling was lowered is refused once it outlives it.
    token, _ = issue_token(api.app.state.signing_key, 1, 1, ceiling + 60)
    reply = api.client.get(FLAVORS, headers={"Authorization": f"Bearer {token}"})
    assert reply.status_code == 401
    assert reply.json()["error"]["message"] == (
        f"token was issued for {ceiling + 60} s, more than the ceiling of {ceiling} s; log in again")


def test_backoff_doubles_the_wait_up_to_its_ceiling() -> None:
    waits = [Backoff(300).wait_after(n) for n in range(1, 14)]
    assert waits == [0, 0, 0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 300]
    assert Backoff(300).wait_after(10**6) == 300


def _unblock(api: Api) -> None:
    """The wait is over: as if its time had passed."""
    with api.app.state.write_sessions() as session:
        session.execute(update(LoginFailure).values(blocked_until=datetime.now(UTC) - timedelta(seconds=1)))
        session.commit()


@pytest.mark.parametrize("username", ["admin", "nobody"])  # unknown users too: a 429 names no one's existence
def test_repeated_failed_sign_ins_are_slowed_down(api: Api, username: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Waits of 30 s, 60 s ... here (not 1, 2 ...): a slow machine's sign-ins must not outlast them.
    monkeypatch.setattr(identity, "FIRST_WAIT_S", 30)
    for _ in range(4):
        reply = sign_in(api.client, username, "wrong-password")
        assert reply.status_code == 401, reply.text
    # Now even the right password waits: 429, and Retry-After says for how long.
    for password in ("wrong-password", api.admin.password):
        reply = sign_in(api.client, username, password)
        assert reply.status_code == 429, reply.text
        assert reply.headers["Retry-After"] == "30"
        assert reply.json()["error"] == {
            "code": "too_many_requests",
            "message": f"too many failed sign-ins for {username!r} from testclient: try again in 30 s"}
    # Another address keeps its own count: an attacker elsewhere does not lock the user out.
    elsewhere = TestClient(api.app, raise_server_exceptions=False, client=("192.0.2.7", 50000))
    assert sign_in(elsewhere, username, "wrong-password").status_code == 401
    _unblock(api)
    reply = sign_in(api.client, username, "wrong-password")  # a fifth failure: twice the wait this time
    assert reply.status_code == 401
    assert sign_in(api.client, username, api.admin.password).headers["Retry-After"] == "60"
    if username == "admin":
        _unblock(api)
        assert sign_in(api.client, "admin", api.admin.password).status_code == 200
        # The success forgot the failures: one more costs nothing yet.
        assert sign_in(api.client, "admin", "wrong-password").status_code == 401
        assert sign_in(api.client, "admin", api.admin.password).status_code == 200


def test_wrong_current_passwords_count_as_failed_sign_ins(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(identity, "FIRST_WAIT_S", 30)
    bob = api.add_user("bob", "acme", Role.member)
    body = {"current_password": "wrong", "new_password": "n" * 10}
    for _ in range(4):
        assert api.client.post(PASSWORD, json=body, headers=bob).status_code == 400
    reply = api.client.post(PASSWORD, json=body | {"current_password": PW}, headers=bob)
    assert reply.status_code == 429 and reply.headers["Retry-After"] == "30"
