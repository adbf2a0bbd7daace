"""``cloudland org``, ``user``, ``whoami``, ``passwd`` and ``logout`` (issue 14). The API is a stub
that records the CLI's calls, so only the CLI's own code runs; the profile is a file in tmp_path."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cloudland.errors import Forbidden, Unauthorized
from cloudland_cli import cloud, main, tenants
from cloudland_cli.settings import CliConfig
from tests.unit.cli_stub import stub_connect

STAMP = "2026-12-07T08:00:00Z"
USERS = [{"id": 1, "username": "alice", "role": "admin", "created_at": STAMP},
         {"id": 7, "username": "bob", "role": "member", "created_at": STAMP}]
ORGS = [{"id": 1, "name": "admin", "operator": True, "created_at": STAMP},
        {"id": 2, "name": "acme", "operator": False, "created_at": STAMP}]


class StubApi:
    """Answers what the commands ask and records every call as (method, path, body)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.refuse: Exception | None = None

    def _record(self, method: str, path: str, body: Any = None) -> None:
        self.calls.append((method, path, body))
        if self.refuse is not None:
            raise self.refuse

    def get(self, path: str, **params: Any) -> Any:
        self._record("GET", path, params or None)
        if path == "/users":
            return {"items": [u for u in USERS if u["username"] == params.get("username")], "limit": 1,
                    "next_after": None}
        assert path == "/me", path
        return {"user_id": 1, "username": "alice", "organisation": "acme", "role": "admin", "operator": False}

    def iter_after(self, path: str, **params: Any) -> Iterator[dict[str, Any]]:
        self._record("GET", path)
        yield from {"/users": USERS, "/organisations": ORGS}[path]

    def post(self, path: str, body: Any = None) -> Any:
        self._record("POST", path, body)
        if path == "/organisations":
            return {"id": 3, "name": body["name"], "operator": False, "created_at": STAMP}
        if path == "/me/password":
            return {"token": "new-token", "expires_at": STAMP}
        return {"id": 9, "username": body.get("username"), "role": body.get("role"), "created_at": STAMP}

    def patch(self, path: str, body: Any) -> Any:
        self._record("PATCH", path, body)
        return {"id": 7, "username": "bob", "role": body["role"], "created_at": STAMP}

    def delete(self, path: str) -> Any:
        self._record("DELETE", path)


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> StubApi:
    stub = StubApi()
    stub_connect(monkeypatch, stub, tenants)
    return stub


@pytest.fixture
def profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A profile logged in as someone, in a config file of its own."""
    path = tmp_path / "cli.json"
    monkeypatch.setenv("CLOUDLAND_CONFIG", str(path))
    monkeypatch.delenv("CLOUDLAND_TOKEN", raising=False)
    CliConfig(token="old-token", expires_at="2999-01-01T00:00:00Z").save()
    return path


def run(*args: str, stdin: str | None = None) -> Any:
    return CliRunner(env={"COLUMNS": "200"}).invoke(main.app, list(args), input=stdin)


def test_org_create_makes_a_new_admin_with_the_password_from_stdin(api: StubApi) -> None:
    result = run("org", "create", "beta", "--admin", "bea", "--password-stdin", stdin="s3cret-pass\n")
    assert result.exit_code == 0, result.output
    assert api.calls == [("POST", "/organisations",
                          {"name": "beta", "admin": {"username": "bea", "password": "s3cret-pass"}})]
    assert "cloudland login --username bea --organisation beta" in result.stdout


def test_org_create_with_an_existing_admin_sends_no_password(api: StubApi) -> None:
    assert run("org", "create", "lab", "--admin", "admin", "--existing").exit_code == 0
    assert api.calls == [("POST", "/organisations", {"name": "lab", "admin": {"username": "admin"}})]


def test_a_short_password_is_refused_before_any_call(api: StubApi) -> None:
    for args in (("org", "create", "beta", "--admin", "bea"), ("user", "create", "carol")):
        result = run(*args, "--password-stdin", stdin="short\n")
        assert result.exit_code == 2
        assert result.stderr.strip() == "cloudland: the password must have at least 8 characters"
    assert api.calls == []


def test_org_list_and_delete(api: StubApi) -> None:
    listed = run("org", "list", "--json")
    assert json.loads(listed.stdout) == {"items": ORGS, "limit": 500, "next_after": None}
    refused = run("org", "delete", "acme")  # no terminal to ask on, no --yes
    assert refused.exit_code == 2 and "pass --yes to delete organisation acme" in refused.stderr
    assert ("DELETE", "/organisations/2", None) not in api.calls
    assert run("org", "delete", "acme", "--yes").exit_code == 0
    assert api.calls[-1] == ("DELETE", "/organisations/2", None)
    unknown = run("org", "delete", "nope", "--yes")
    assert unknown.exit_code == 2 and "no organisation named 'nope'" in unknown.stderr


def test_user_list_prints_each_users_role(api: StubApi) -> None:
    result = run("user", "list")
    assert result.exit_code == 0
    rows = [line for line in result.stdout.splitlines() if "alice" in line or "bob" in line]
    assert len(rows) == 2 and "admin" in rows[0] and "member" in rows[1]


def test_user_create_add_and_role(api: StubApi) -> None:
    assert run("user", "create", "carol", "--role", "reader", "--password-stdin", stdin="carol-pass\n").exit_code == 0
    assert api.calls[-1] == ("POST", "/users", {"username": "carol", "password": "carol-pass", "role": "reader"})
    assert run("user", "add", "dave").exit_code == 0
    assert api.calls[-1] == ("POST", "/memberships", {"username": "dave", "role": "member"})
    result = run("user", "role", "bob", "admin")
    assert result.exit_code == 0 and result.stdout.strip() == "user 7 bob is now admin"
    assert api.calls[-2:] == [("GET", "/users", {"username": "bob", "limit": 1}),
                              ("PATCH", "/memberships/7", {"role": "admin"})]
    bad = run("user", "role", "bob", "owner")
    assert bad.exit_code == 2 and bad.stderr.strip() == "cloudland: role must be admin, member or reader, not 'owner'"


def test_user_remove_and_delete_by_username(api: StubApi) -> None:
    assert run("user", "remove", "bob", "--yes").exit_code == 0
    assert api.calls[-1] == ("DELETE", "/memberships/7", None)
    assert run("user", "delete", "bob", "--yes").stdout.strip() == "user 7 bob deleted"
    assert api.calls[-1] == ("DELETE", "/users/7", None)
    result = run("user", "delete", "zed", "--yes")
    assert result.exit_code == 2 and "no user named 'zed' in this organisation" in result.stderr


def test_a_refusal_of_the_api_exits_4_in_one_line(api: StubApi) -> None:
    api.refuse = Forbidden("role 'member' may not create users; needs admin in the organisation")
    result = run("user", "create", "carol", "--password-stdin", stdin="carol-pass\n")
    assert result.exit_code == 4
    assert result.stderr == "cloudland: role 'member' may not create users; needs admin in the organisation\n"


def test_passwd_stores_the_new_token(api: StubApi, profile: Path) -> None:
    result = run("passwd", "--password-stdin", stdin="old-pass\nnew-password\n")
    assert result.exit_code == 0, result.output
    assert api.calls == [("POST", "/me/password", {"current_password": "old-pass", "new_password": "new-password"})]
    assert CliConfig.load().token == "new-token"
    assert "your other tokens no longer work" in result.stdout


def test_whoami(api: StubApi) -> None:
    result = run("whoami", "--json")
    assert json.loads(result.stdout)["organisation"] == "acme"


class FakeClient:
    """ApiClient for `logout`: records the token it was made with, answers or refuses POST /logout."""

    made: list[str | None] = []
    refuse: Exception | None = None

    def __init__(self, token: str | None) -> None:
        self.token = token

    @classmethod
    def from_config(cls, config: CliConfig | None = None, *, require_token: bool = True) -> FakeClient:
        assert config is not None
        cls.made.append(config.token)
        return cls(config.token)

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def post(self, path: str, body: Any = None) -> None:
        assert path == "/logout"
        if self.refuse is not None:
            raise self.refuse


@pytest.mark.parametrize(("refuse", "said"), [(None, "token revoked"),
                                              (Unauthorized("token expired; log in again"), "no longer worked")])
def test_logout_ends_the_token_and_forgets_it(monkeypatch: pytest.MonkeyPatch, profile: Path,
                                              refuse: Exception | None, said: str) -> None:
    monkeypatch.setattr(tenants, "ApiClient", FakeClient)
    monkeypatch.setattr(FakeClient, "made", [])
    monkeypatch.setattr(FakeClient, "refuse", refuse)
    result = run("logout")
    assert result.exit_code == 0, result.output
    assert FakeClient.made == ["old-token"] and said in result.stdout
    assert CliConfig.load().token is None
    again = run("logout")
    assert again.exit_code == 4 and again.stderr.strip() == "cloudland: not logged in"


class LoginClient:
    """ApiClient for `login`: records (username, password, organisation) of each sign-in."""

    logins: list[tuple[str, str, str | None]] = []

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def __enter__(self) -> LoginClient:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def login(self, username: str, password: str, organisation: str | None, lifetime: int | None) -> dict[str, str]:
        self.logins.append((username, password, organisation))
        return {"token": f"token-of-{username}", "expires_at": STAMP}


def test_login_beside_the_admin_credentials_asks_another_user_for_their_password(
        monkeypatch: pytest.MonkeyPatch, profile: Path, tmp_path: Path) -> None:
    """README, "Tenants": `login --username alice` in a checkout with var/admin-credentials asks for
    alice's password; `login` and `login --username admin` read the admin's from the file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "admin-credentials").write_text("username=admin\npassword=admin-secret\n")
    monkeypatch.setattr(cloud, "ApiClient", LoginClient)
    monkeypatch.setattr(LoginClient, "logins", [])
    result = run("login", "--username", "alice", "--organisation", "acme", stdin="alice-secret\n")
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("password:")
    assert CliConfig.load().token == "token-of-alice"
    for argv in (["login"], ["login", "--username", "admin"]):
        assert run(*argv).exit_code == 0
    (tmp_path / "bea").write_text("username=bea\npassword=bea-secret\n")
    assert run("login", "--username", "alice", "--credentials", str(tmp_path / "bea")).exit_code == 0
    assert LoginClient.logins == [("alice", "alice-secret", "acme"), ("admin", "admin-secret", None),
                                  ("admin", "admin-secret", None), ("alice", "bea-secret", None)]
