"""Databases for the tests: a migrated SQLite file, or a database on a throwaway PostgreSQL 15.

``database_url`` is parametrised over both, so a test that takes it (directly or through the
``settings``/``api`` fixtures in ``tests/api``) runs on SQLite and on a real PostgreSQL server.

The PostgreSQL server is started once per session, in a temporary directory, on a free port on
127.0.0.1 only, with trust auth for the ``postgres`` superuser, and is always stopped and
removed at the end. The schema is migrated once into a template database; each test gets its
own database copied from it (``CREATE DATABASE ... TEMPLATE``, a file copy, much faster than
running the migrations again) and dropped afterwards.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

# argon2 at its cheapest for the whole suite and every process it starts (API servers, `make run`):
# the production cost is half a second a hash, and the suite signs in and creates users thousands
# of times. tests/api/test_auth.py checks that the production default is what ships.
os.environ.setdefault("CLOUDLAND_PASSWORD_HASH_PROFILE", "CHEAPEST")

# Emulated hosts (cloudland_lab) for any test folder: lab_factory, session_lab_factory, mpich;
# identity systems (slapd, an OpenID provider): tests/identityfixtures.py; cpu_hog: tests/hog.py.
pytest_plugins = ["tests.labfixtures", "tests.identityfixtures", "tests.hog"]

PG_VERSION = "15"
PG_BIN = Path(f"/usr/lib/postgresql/{PG_VERSION}/bin")
PG_PACKAGE = f"postgresql-{PG_VERSION}"
TEMPLATE_DB = "cloudland_template"
# Throwaway data: durability only costs time (every CREATE DATABASE and commit would fsync).
FAST_UNSAFE = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _run(*argv: str, user: str | None = None) -> None:
    """Run a PostgreSQL tool; on failure raise with its output (pytest shows it)."""
    if user is not None:
        argv = ("runuser", "-u", user, "--", *argv)
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}{done.stderr}")


class PostgresServer:
    """A private PostgreSQL cluster in ``base``; create/drop per-test databases from the template."""

    def __init__(self, base: Path, port: int) -> None:
        self.base = base
        self.port = port
        self.data = base / "data"
        self.log = base / "postgresql.log"
        # Root: Debian's cluster tools (they run the server as "postgres"; initdb refuses root).
        # Anyone else: plain initdb/pg_ctl as themselves, nothing outside ``base``.
        self.as_root = os.geteuid() == 0
        self.cluster = f"cloudland_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self._names = itertools.count()
        self._admin = None  # psycopg connection to the "postgres" database, autocommit

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        # TCP on loopback only; the Unix socket goes in ``base`` too, not /var/run/postgresql.
        if self.as_root:
            shutil.chown(self.base, "postgres", "postgres")
            # listen_addresses is given at start instead: pg_createcluster -o writes 127.0.0.1
            # unquoted (it takes it for a number) and the server then refuses its config file.
            pgoptions = [arg for name, value in FAST_UNSAFE.items() for arg in ("-o", f"{name}={value}")]
            # --start-conf manual: should a crash leak the cluster, no init script starts it at boot.
            _run("pg_createcluster", "-u", "postgres", "-d", str(self.data), "-s", str(self.base),
                 "-p", str(self.port), "-l", str(self.log), "--locale", "C.UTF-8", "--start-conf", "manual",
                 "-q", *pgoptions, PG_VERSION, self.cluster, "--", "--auth-local=trust", "--auth-host=trust")
        else:
            _run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                 "--locale=C.UTF-8", "-E", "UTF8", "--no-sync")
        self._launch()
        self._admin.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
        from cloudland_api.db import upgrade

        upgrade(self.url(TEMPLATE_DB))
        # No connections to the template from now on: CREATE DATABASE ... TEMPLATE needs it idle.
        self._admin.execute(f'ALTER DATABASE "{TEMPLATE_DB}" WITH IS_TEMPLATE true ALLOW_CONNECTIONS false')

    def _launch(self) -> None:
        """Start the server on its existing data directory and connect the admin session."""
        options = {"listen_addresses": "127.0.0.1", **FAST_UNSAFE}
        if self.as_root:
            _run("pg_ctlcluster", "-o", f"-c listen_addresses={options['listen_addresses']}",
                 PG_VERSION, self.cluster, "start")
        else:
            options |= {"port": str(self.port), "unix_socket_directories": str(self.base)}
            settings = " ".join(f"-c {name}={value}" for name, value in options.items())
            _run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", settings, "-w", "start")
        import psycopg

        self._admin = psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                                      autocommit=True)

    def crash(self) -> None:
        """kill -9 the server, its postmaster and every backend, as a crash of its machine would
        (tests/chaos); ``recover`` starts it again on the same data."""
        import signal
        import time

        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True).stdout.split()
        for pid in [postmaster, *map(int, children)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        end = time.monotonic() + 10
        while time.monotonic() < end and any(Path(f"/proc/{pid}").exists() for pid in [postmaster, *children]):
            time.sleep(0.05)
        if self._admin is not None:
            self._admin.close()

    def recover(self) -> None:
        """Start the server again after ``crash`` (it replays its log)."""
        self._launch()

    def stop(self) -> None:
        """Stop and remove everything; best effort at each step so a failure cannot leak the rest."""
        errors: list[str] = []
        if self._admin is not None:
            self._admin.close()
        steps = ([("pg_ctlcluster", PG_VERSION, self.cluster, "stop", "-m", "fast"),
                  ("pg_dropcluster", "--stop", PG_VERSION, self.cluster)] if self.as_root else
                 [(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")])
        for argv in steps:
            try:
                _run(*argv)
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
                errors.append(str(error))
        shutil.rmtree(self.base, ignore_errors=True)
        # "not running" from a server that never started is expected; anything else is reported.
        real = [e for e in errors if "not running" not in e and "does not exist" not in e]
        if real:
            raise RuntimeError("PostgreSQL cleanup failed:\n" + "\n".join(real))

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    @contextmanager
    def database(self, migrated: bool = True) -> Iterator[str]:
        """A fresh database, copied from the migrated template (or empty); dropped afterwards, even if in use."""
        assert self._admin is not None
        name = f"test_{next(self._names)}"
        self._admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DB if migrated else "template0"}"')
        try:
            yield self.url(name)
        finally:
            self._admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def postgres_missing() -> str | None:
    """Why a PostgreSQL server cannot be started here, or None if it can."""
    if not (PG_BIN / "postgres").exists():
        return f"PostgreSQL {PG_VERSION} server not installed: apt-get install {PG_PACKAGE} (deploy/bootstrap.sh does)"
    if os.geteuid() == 0:
        if shutil.which("pg_createcluster") is None:
            return "pg_createcluster not found: apt-get install postgresql-common"
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return f"no 'postgres' user: reinstall {PG_PACKAGE}"
    return None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A running throwaway PostgreSQL 15 with a migrated template database, for the whole session."""
    reason = postgres_missing()
    if reason is not None:
        # CI installs the server (make test -> deploy/bootstrap.sh); there a skip would hide
        # that half of the suite, so fail instead.
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    # Not tmp_path_factory: its directories are 0700 root, and the server runs as "postgres".
    base = Path(tempfile.mkdtemp(prefix="cloudland-pg-"))
    server = PostgresServer(base, _free_port())
    try:
        try:
            server.start()
        except Exception as error:
            raise RuntimeError(f"could not start PostgreSQL: {error}\nserver log:\n{server.log_tail()}") from error
        yield server
    finally:
        server.stop()


BACKENDS = [pytest.param("sqlite", id="sqlite"), pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head once per session; ``database_url`` hands each test a copy
    (a file copy takes well under a millisecond, the migrations a third of a second, and tests/api
    alone asks for hundreds of SQLite databases). Checkpointed, so the file is the whole database."""
    import sqlite3

    from cloudland_api.db import upgrade

    template = tmp_path_factory.mktemp("sqlite-template") / "cloudland.db"
    upgrade(f"sqlite:///{template}")
    with sqlite3.connect(template) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
    for leftover in (Path(f"{template}-wal"), Path(f"{template}-shm")):
        leftover.unlink(missing_ok=True)
    return template


def _database(request: pytest.FixtureRequest, tmp_path: Path, migrated: bool) -> Iterator[str]:
    if request.param == "sqlite":
        path = tmp_path / "db" / "cloudland.db"
        if migrated:
            path.parent.mkdir()
            # A copy of the session's migrated file: the same schema and alembic_version as a
            # fresh ``upgrade`` (tests/api/test_foundation.py still migrates files of its own).
            shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
    else:
        # Looked up lazily so that `-m "not postgres"` never starts a server.
        server: PostgresServer = request.getfixturevalue("postgres_server")
        with server.database(migrated) as url:
            yield url


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database of its own for this test, on SQLite and on PostgreSQL."""
    yield from _database(request, tmp_path, migrated=True)


@pytest.fixture(params=BACKENDS)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Like ``database_url`` but never migrated: no tables at all (SQLite: the file does not exist yet)."""
    yield from _database(request, tmp_path, migrated=False)


@pytest.fixture(scope="session", autouse=True)
def tree_credentials(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One CA for every tree, API and client of the session (cloudland/pki.py), in a 0700
    directory: ``CLOUDLAND_PKI``, which roots, host agents and RootClient read. A test that
    wants a CA of its own passes ``--pki``/``pki_dir``, or clears the variable."""
    from cloudland import pki

    directory = pki.ensure(tmp_path_factory.mktemp("tree-credentials") / "pki")
    previous = os.environ.get("CLOUDLAND_PKI")
    os.environ["CLOUDLAND_PKI"] = str(directory)
    yield directory
    if previous is None:
        os.environ.pop("CLOUDLAND_PKI", None)
    else:
        os.environ["CLOUDLAND_PKI"] = previous


@pytest.fixture(autouse=True)
def keep_umask() -> Iterator[None]:
    """Commands run in-process (``cloudland up`` through CliRunner) set the umask to 077 for
    their process's life (cloudland/statedir.py); here that life is one test's."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield
    os.umask(previous)
