"""Engines, sessions and migrations.

The schema is owned by Alembic (``api/migrations/``); ``upgrade(url)`` runs it in-process,
so no ``alembic.ini`` is needed and start-up and tests use the same path.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets foreign keys on and its parent directory created."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # TestClient runs the app in another thread than the one that opened the connection.
        engine = create_engine(url, connect_args={"check_same_thread": False})

        # SQLite ignores FOREIGN KEY clauses unless asked per connection.
        @event.listens_for(engine, "connect")
        def _foreign_keys(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose objects stay readable after commit (responses are built after it)."""
    return sessionmaker(engine, expire_on_commit=False)


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` with Alembic, programmatically."""
    if url.startswith("sqlite"):
        make_engine(url).dispose()  # creates the parent directory of the file
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # Alembic's Config interpolates "%" — escape it so passwords with % survive.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(config, revision)


def iter_session(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One session per request: committed by the caller, rolled back and closed on any error."""
    with factory() as session:
        try:
            yield session
        except BaseException:
            session.rollback()
            raise
