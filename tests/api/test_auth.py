"""Login and bearer tokens through the real app."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jwt
import pytest

from argon2 import PasswordHasher

from cloudland.errors import ConfigError
from cloudland_api import security
from cloudland_api.security import issue_token
from tests.api.conftest import Api

FLAVORS = "/api/v1/flavors"


def test_passwords_are_hashed_at_rfc_9106_cost_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite hashes at argon2's CHEAPEST (tests/conftest.py); what ships is RFC 9106's low-memory
    profile, and a misspelt profile stops the API at start instead of silently picking one."""
    monkeypatch.delenv(security.PASSWORD_HASH_PROFILE_ENV)
    shipped = security._password_hasher()
    assert (shipped.time_cost, shipped.memory_cost, shipped.parallelism) == (3, 65536, 4)
    assert shipped.verify(PasswordHasher.from_parameters(security.profiles.CHEAPEST).hash("pw"), "pw")
    monkeypatch.setenv(security.PASSWORD_HASH_PROFILE_ENV, "FAST")
    with pytest.raises(ConfigError, match="'FAST' is not an argon2 profile"):
        security._password_hasher()


def test_login_returns_a_token_that_works(api: Api) -> None:
    reply = api.client.post("/api/v1/login", json={"username": "admin", "password": api.admin.password})
    assert reply.status_code == 200
    body = reply.json()
    expires_at = datetime.fromisoformat(body["expires_at"])
    assert timedelta(0) < expires_at - datetime.now(UTC) <= timedelta(seconds=api.settings.token_lifetime_s)
    assert api.client.get(FLAVORS, headers={"Authorization": f"Bearer {body['token']}"}).status_code == 200


@pytest.mark.parametrize(
    ("username", "password"), [("admin", "wrong-password"), ("nobody", "whatever"), ("ADMIN", None)]
)
def test_bad_credentials_are_401_with_one_message(api: Api, username: str, password: str | None) -> None:
    reply = api.client.post("/api/v1/login", json={"username": username, "password": password or api.admin.password})
    assert reply.status_code == 401
    assert reply.json() == {"error": {"code": "unauthorized", "message": "invalid username or password"}}
    assert reply.headers["WWW-Authenticate"] == "Bearer"


def test_login_to_an_organisation_the_user_is_not_in_is_401(api: Api) -> None:
    body = {"username": "admin", "password": api.admin.password, "organisation": "elsewhere"}
    reply = api.client.post("/api/v1/login", json=body)
    assert reply.status_code == 401
    assert "elsewhere" in reply.json()["error"]["message"]


def forged(api: Api) -> str:
    return jwt.encode({"sub": "1", "org": 1, "exp": 4102444800}, b"x" * 32, algorithm="HS256")


def unsigned(api: Api) -> str:
    return jwt.encode({"sub": "1", "org": 1, "exp": 4102444800}, None, algorithm="none")


def expired(api: Api) -> str:
    token, _ = issue_token(api.app.state.signing_key, 1, 1, 60, now=datetime.now(UTC) - timedelta(hours=2))
    return token


def no_such_user(api: Api) -> str:
    token, _ = issue_token(api.app.state.signing_key, 999, 1, 60)
    return token


@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        (None, "missing bearer token"),
        ("Basic YWRtaW46YWRtaW4=", "missing bearer token"),
        ("Bearer", "missing bearer token"),
        ("Bearer not.a.jwt", "invalid token"),
        ("Bearer %%%%", "invalid token"),
        (forged, "invalid token"),
        (unsigned, "invalid token"),
        (expired, "token expired"),
        (no_such_user, "no longer exists"),
    ],
)
def test_bad_tokens_are_401(api: Api, authorization: object, message: str) -> None:
    if callable(authorization):
        authorization = f"Bearer {authorization(api)}"
    headers = {"Authorization": authorization} if isinstance(authorization, str) else {}
    reply = api.client.get(FLAVORS, headers=headers)
    assert reply.status_code == 401, reply.text
    assert message in reply.json()["error"]["message"]
    assert reply.json()["error"]["code"] == "unauthorized"
