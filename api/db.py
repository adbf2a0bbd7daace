"""Engines, sessions and migrations.

The schema is owned by Alembic (``api/migrations/``); ``upgrade(url)`` runs it in-process,
so no ``alembic.ini`` is needed and start-up and tests use the same path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, Select, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
WRITE_OPTION = "cloudland_write"
SQLITE_POOL = 64  # connections kept (and as many more at a peak): the request threads and the job engine's
T = TypeVar("T", bound=tuple[Any, ...])


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets foreign keys on and its parent directory created."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # check_same_thread: requests, the dispatcher and the sync run on different threads.
        # timeout: wait up to 30 s for another writer instead of failing "database is locked".
        # pool_size: every thread that may hold a session at once keeps its connection. With the
        # default 5 (and 10 overflow, closed on return), requests at concurrency 100 opened a
        # new connection, and ran the PRAGMAs below, for most checkouts: ~15 % of the API's CPU
        # under bench/load_bench.py (issue 15). A SQLite connection is a file handle and a cache.
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               pool_size=SQLITE_POOL, max_overflow=SQLITE_POOL)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            # We issue BEGIN ourselves (below); pysqlite's own would always be DEFERRED.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")  # SQLite ignores FOREIGN KEY clauses otherwise
            # WAL: readers never wait for the writer. NORMAL loses nothing on a process crash.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(connection):  # type: ignore[no-untyped-def]
            # A DEFERRED transaction that reads and then writes fails at once (SQLITE_BUSY,
            # no waiting) if another connection wrote in between; IMMEDIATE takes the write
            # lock up front and waits its turn instead. Read-only sessions stay DEFERRED.
            immediate = connection.get_execution_options().get(WRITE_OPTION)
            # On the DBAPI connection itself: SQLAlchemy's execution around the statement cost more
            # than the statement (issue 15: every read's transaction begins here).
            connection.connection.dbapi_connection.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    return create_engine(url, pool_pre_ping=True)


def session_factory(engine: Engine, write: bool = False) -> sessionmaker[Session]:
    """Sessions whose objects stay readable after commit (responses are built after it).

    ``write`` sessions take SQLite's write lock when they begin (see ``make_engine``);
    use them for every transaction that reads and then writes.
    """
    bind = engine.execution_options(**{WRITE_OPTION: True}) if write else engine
    return sessionmaker(bind, expire_on_commit=False)


def for_change(query: Select[T]) -> Select[T]:
    """``query`` locking the rows it reads until the transaction ends, for a change that depends
    on them (FOR UPDATE on PostgreSQL; SQLite ignores it: its write transactions are serial).

    populate_existing: the rows are read again even if the session loaded them before the lock,
    so what was committed meanwhile is what the change sees.
    """
    return query.with_for_update().execution_options(populate_existing=True)


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` with Alembic, programmatically."""
    if url.startswith("sqlite"):
        make_engine(url).dispose()  # creates the parent directory of the file
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # Alembic's Config interpolates "%" — escape it so passwords with % survive.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(config, revision)
