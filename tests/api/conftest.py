"""A real control plane per test: migrated SQLite file, state dir, TestClient. No mocks."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from cloudland_api import jobs
from cloudland_api.app import create_app
from cloudland_api.db import make_engine, session_factory
from cloudland_api.models import Hypervisor, Instance, Job, Membership, Organisation, Role, User
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
    # root_endpoint "": no tree here, so jobs stay pending (tests/integration runs the real tree).
    return ApiSettings(database_url=database_url, state_dir=tmp_path / "state", root_endpoint="")


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


ImageMaker = Callable[..., dict]


@pytest.fixture
def make_image(api: Api, admin_headers: dict[str, str]) -> ImageMaker:
    """An image, ``active`` (a few raw bytes uploaded) unless ``upload=False`` leaves it ``queued``."""
    def make(name: str = "img", headers: dict[str, str] | None = None, upload: bool = True, **spec: str) -> dict:
        headers = headers or admin_headers
        reply = api.client.post("/api/v1/images", json={"name": name, "disk_format": "raw"} | spec, headers=headers)
        assert reply.status_code == 201, reply.text
        if not upload:
            return reply.json()
        reply = api.client.put(f"/api/v1/images/{reply.json()['id']}/file", content=b"\0" * 512,
                               headers=headers | {"Content-Type": "application/octet-stream"})
        assert reply.status_code == 200 and reply.json()["status"] == "active", reply.text
        return reply.json()

    return make


Launcher = Callable[..., dict]


@pytest.fixture
def launch(api: Api, admin_headers: dict[str, str], make_flavor: FlavorMaker, make_image: ImageMaker) -> Launcher:
    """POST /instances (202 asserted) from a flavor "small" and image "img" made on first use per caller."""
    ready: set[str] = set()

    def launch_(name: str = "vm", count: int = 1, headers: dict[str, str] | None = None) -> dict:
        headers = headers or admin_headers
        if headers["Authorization"] not in ready:
            make_flavor("small", headers=headers)
            make_image("img", headers=headers)
            ready.add(headers["Authorization"])
        body = {"name": name, "flavor": "small", "image": "img", "count": count}
        reply = api.client.post("/api/v1/instances", json=body, headers=headers)
        assert reply.status_code == 202, reply.text
        return reply.json()

    return launch_


def settle(api: Api, job_id: str, kind: str = "ok", reason: str | None = None) -> None:
    """End a job as the job engine's writer would (there is no tree in these tests)."""
    with api.app.state.write_sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        jobs.finish(session, [(job, jobs.Outcome(job_id, kind, reason))])
        session.commit()


def add_hypervisor(api: Api, hypervisor_id: int, **fields: object) -> None:
    """A hypervisor row as the reconciler would write it from the tree's report (idle: all memory free)."""
    spec: dict[str, object] = {"hostname": f"hv{hypervisor_id}", "cpus": 8, "memory_mib": 16384} | fields
    spec.setdefault("free_memory_mib", spec["memory_mib"])
    with api.app.state.write_sessions() as session:
        session.add(Hypervisor(id=hypervisor_id, **spec))
        session.commit()


def running(api: Api, launch: Launcher, name: str = "con", hypervisor: int = 7) -> dict:
    """An instance created and placed on hypervisor ``hypervisor`` (named ``hv<id>``), its job ended."""
    accepted = launch(name)
    [instance], [job] = accepted["instances"], accepted["jobs"]
    add_hypervisor(api, hypervisor)
    with api.app.state.write_sessions() as session:
        session.execute(update(Instance).where(Instance.id == instance["id"]).values(hypervisor_id=hypervisor))
        session.commit()
    settle(api, job["id"])
    return instance


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    """Write sessions on a migrated database, without an app (tests of one layer below the routes)."""
    engine = make_engine(database_url)
    yield session_factory(engine, write=True)
    engine.dispose()


@pytest.fixture
def org(sessions: sessionmaker[Session]) -> int:
    """A fresh organisation's id."""
    with sessions() as session:
        row = Organisation(name=f"org-{uuid.uuid4().hex[:8]}")
        session.add(row)
        session.commit()
        return row.id
