"""A real control plane per test: migrated SQLite file, state dir, TestClient. No mocks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cloudland_api.app import create_app
from cloudland_api.models import Membership, Organisation, Role, User
from cloudland_api.security import AdminCredentials, bootstrap_admin, hash_password
from cloudland_api.settings import ApiSettings


@dataclass
class Api:
    """The app under test, its client, and the bootstrapped admin."""

    app: FastAPI
    client: TestClient
    settings: ApiSettings
    admin: AdminCredentials

    def token(self, username: str, password: str) -> str:
        reply = self.client.post("/api/v1/login", json={"username": username, "password": password})
        assert reply.status_code == 200, reply.text
        token: str = reply.json()["token"]
        return token

    def headers(self, username: str, password: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(username, password)}"}

    def add_user(self, username: str, org: str, role: Role, password: str = "pw-" + "x" * 8) -> dict[str, str]:
        """A user with ``role`` in ``org`` (created if new); returns their auth headers."""
        with self.app.state.sessions() as session:
            organisation = session.query(Organisation).filter_by(name=org).one_or_none() or Organisation(name=org)
            user = User(username=username, password_hash=hash_password(password))
            session.add_all([organisation, user, Membership(user=user, org=organisation, role=role)])
            session.commit()
        return self.headers(username, password)


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> ApiSettings:
    """Every API test runs twice: on SQLite and on PostgreSQL (``database_url``, tests/conftest.py)."""
    return ApiSettings(database_url=database_url, state_dir=tmp_path / "state")


@pytest.fixture
def api(settings: ApiSettings) -> Iterator[Api]:
    # database_url is already migrated to head.
    app = create_app(settings)
    with app.state.sessions() as session:
        admin = bootstrap_admin(session, settings.state_dir)
    assert admin is not None
    # raise_server_exceptions=False: a 500 must show up as a status the tests assert on.
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Api(app, client, settings, admin)
    app.state.engine.dispose()


@pytest.fixture
def admin_headers(api: Api) -> dict[str, str]:
    return api.headers(api.admin.username, api.admin.password)


FlavorMaker = Callable[..., dict]


@pytest.fixture
def make_flavor(api: Api, admin_headers: dict[str, str]) -> FlavorMaker:
    def make(name: str = "small", headers: dict[str, str] | None = None, **spec: int) -> dict:
        body = {"name": name, "vcpus": 1, "memory_mib": 512, "disk_gib": 10} | spec
        reply = api.client.post("/api/v1/flavors", json=body, headers=headers or admin_headers)
        assert reply.status_code == 201, reply.text
        return reply.json()

    return make
