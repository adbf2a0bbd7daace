"""The schema and its constraints behave the same on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
import time

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from cloudland_api.db import MIGRATIONS, make_engine, session_factory, upgrade
from cloudland_api.models import Base, Flavor, Organisation


def head_revision() -> str:
    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    assert head is not None
    return head


def test_migration_brings_an_empty_database_to_head(empty_database_url: str) -> None:
    engine = make_engine(empty_database_url)
    try:
        assert inspect(engine).get_table_names() == []
        upgrade(empty_database_url)
        with engine.connect() as connection:
            versions = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        assert versions == [head_revision()]
        assert set(inspect(engine).get_table_names()) == set(Base.metadata.tables) | {"alembic_version"}
    finally:
        engine.dispose()


def downgrade(url: str, revision: str) -> None:
    """Bring the database at ``url`` down to ``revision`` (``db.upgrade``'s counterpart, for tests)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.downgrade(config, revision)


def test_database_url_is_already_at_head(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == head_revision()
    finally:
        engine.dispose()


def _is_unique_violation(error: IntegrityError) -> bool:
    """The (org_id, name) unique constraint fired, not some other integrity error."""
    orig = error.orig
    if getattr(orig, "sqlstate", None) == "23505":  # PostgreSQL unique_violation
        return orig.diag.constraint_name == "uq_flavors_org_name"  # type: ignore[union-attr]
    return "UNIQUE constraint failed: flavors.org_id, flavors.name" in str(orig)


def test_concurrent_duplicate_flavor_is_refused_by_the_unique_constraint(database_url: str) -> None:
    """Two sessions insert the same (org_id, name) at once: the second waits for the first, then fails."""
    engine = make_engine(database_url)
    sessions = session_factory(engine)
    try:
        with sessions() as session:
            org = Organisation(name="acme")
            session.add(org)
            session.commit()
            org_id = org.id

        def flavor() -> Flavor:
            return Flavor(org_id=org_id, name="small", vcpus=1, memory_mib=512, disk_gib=10)

        outcome: list[BaseException | None] = []

        def second() -> None:
            with sessions() as session:
                session.add(flavor())
                try:
                    session.commit()  # blocks until the first transaction ends
                    outcome.append(None)
                except BaseException as error:  # noqa: BLE001 - reported to the main thread
                    session.rollback()
                    outcome.append(error)

        with sessions() as first:
            first.add(flavor())
            first.flush()  # the row is written but not committed
            racer = threading.Thread(target=second)
            racer.start()
            time.sleep(0.3)
            # PostgreSQL waits on the uncommitted duplicate key; SQLite waits for the write lock.
            assert racer.is_alive() and not outcome, "the second insert did not wait for the first"
            first.commit()
        racer.join(timeout=10)
        assert not racer.is_alive()

        [error] = outcome
        assert isinstance(error, IntegrityError), repr(error)
        assert _is_unique_violation(error), str(error)
        with sessions() as session:
            assert session.query(Flavor).filter_by(org_id=org_id, name="small").count() == 1
    finally:
        engine.dispose()


def test_jobs_become_generic_and_back_with_their_instance(empty_database_url: str) -> None:
    """0004 turns each VM job's ``instance_id`` into its subject, and its downgrade turns it back."""
    upgrade(empty_database_url, "0003")
    engine = make_engine(empty_database_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO organisations (id, name, operator, created_at) "
                                    "VALUES (1, 'acme', false, CURRENT_TIMESTAMP)"))
            connection.execute(text(
                "INSERT INTO instances (id, org_id, name, uuid, vcpus, memory_mib, disk_gib, arch, status, "
                "created_at, updated_at) VALUES (7, 1, 'vm', 'u-7', 1, 64, 1, 'x86_64', 'running', "
                "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
            connection.execute(text(
                "INSERT INTO jobs (id, org_id, batch, action, instance_id, args, state, attempts, created_at, "
                "updated_at) VALUES ('j1', 1, 'b1', 'start', 7, '{}', 'succeeded', 1, CURRENT_TIMESTAMP, "
                "CURRENT_TIMESTAMP)"))
        upgrade(empty_database_url)
        with engine.connect() as connection:
            row = connection.execute(text("SELECT kind, action, subject_type, subject_id, targets FROM jobs")).one()
        assert tuple(row) == ("vm", "start", "instance", 7, None)
        assert "instance_id" not in {c["name"] for c in inspect(engine).get_columns("jobs")}
        downgrade(empty_database_url, "0003")
        with engine.connect() as connection:
            assert tuple(connection.execute(text("SELECT id, instance_id FROM jobs")).one()) == ("j1", 7)
    finally:
        engine.dispose()


def test_users_get_a_token_generation_and_lose_it_on_downgrade(empty_database_url: str) -> None:
    """0005 gives every existing user token generation 0 and adds the logout and backoff tables;
    its downgrade takes them away and keeps the users."""
    upgrade(empty_database_url, "0004")
    engine = make_engine(empty_database_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO users (id, username, password_hash, created_at) "
                                    "VALUES (3, 'bob', 'x', CURRENT_TIMESTAMP)"))
        upgrade(empty_database_url)
        with engine.begin() as connection:
            assert connection.execute(text("SELECT token_generation FROM users WHERE id = 3")).scalar_one() == 0
            connection.execute(text("INSERT INTO revoked_tokens (token_id, user_id, expires_at) "
                                    "VALUES ('t1', 3, CURRENT_TIMESTAMP)"))
            connection.execute(text("INSERT INTO login_failures (username, address, failures, last_failed_at) "
                                    "VALUES ('bob', '192.0.2.1', 4, CURRENT_TIMESTAMP)"))
        with engine.begin() as connection:  # a deleted user's revocations go with them
            connection.execute(text("DELETE FROM users WHERE id = 3"))
            assert connection.execute(text("SELECT count(*) FROM revoked_tokens")).scalar_one() == 0
            connection.execute(text("INSERT INTO users (id, username, password_hash, created_at) "
                                    "VALUES (4, 'carol', 'x', CURRENT_TIMESTAMP)"))
            connection.execute(text("INSERT INTO organisations (id, name, operator, created_at) "
                                    "VALUES (1, 'acme', false, CURRENT_TIMESTAMP)"))
            connection.execute(text("INSERT INTO memberships (user_id, org_id, role) VALUES (4, 1, 'admin')"))
        downgrade(empty_database_url, "0004")
        inspector = inspect(engine)
        assert {"revoked_tokens", "login_failures"} & set(inspector.get_table_names()) == set()
        assert "token_generation" not in {c["name"] for c in inspector.get_columns("users")}
        with engine.connect() as connection:
            assert connection.execute(text("SELECT username FROM users")).scalars().all() == ["carol"]
            # ... with her membership: the downgrade did not copy ``users`` (which would cascade on SQLite).
            assert tuple(connection.execute(text("SELECT user_id, org_id, role FROM memberships")).one()) == (
                4, 1, "admin")
    finally:
        engine.dispose()
