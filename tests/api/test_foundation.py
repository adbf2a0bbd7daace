"""Settings, migrations, the signing key and the admin bootstrap, on real files."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from cloudland.errors import ConfigError
from cloudland_api.db import make_engine, session_factory, upgrade
from cloudland_api.security import (
    ADMIN_CREDENTIALS_FILE,
    SIGNING_KEY_FILE,
    bootstrap_admin,
    load_signing_key,
    verify_password,
)
from cloudland_api.models import User
from cloudland_api.settings import ApiSettings


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_settings_defaults_are_the_embedded_mode() -> None:
    settings = ApiSettings.from_env({})
    assert settings.database_url == "sqlite:///var/cloudland.db"
    assert settings.state_dir == Path("var")
    assert settings.token_lifetime_s > 0


def test_settings_read_from_env() -> None:
    settings = ApiSettings.from_env(
        {"CLOUDLAND_API_DATABASE_URL": "postgresql+psycopg://u@h/db", "CLOUDLAND_API_TOKEN_LIFETIME_S": "60",
         "CLOUDLAND_API_STATE_DIR": "/tmp/x"}
    )
    assert (settings.database_url, settings.token_lifetime_s, settings.state_dir) == (
        "postgresql+psycopg://u@h/db", 60, Path("/tmp/x"))


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CLOUDLAND_API_TOKEN_LIFETIME_S", "soon"),
        ("CLOUDLAND_API_TOKEN_LIFETIME_S", "0"),
        ("CLOUDLAND_API_TOKEN_LIFETIME_S", "999999"),
        ("CLOUDLAND_API_TOKEN_MAX_LIFETIME_S", "100000"),
        ("CLOUDLAND_API_TOKEN_MAX_LIFETIME_S", "60"),  # below TOKEN_LIFETIME_S
        ("CLOUDLAND_API_LOGIN_BACKOFF_MAX_S", "0"),
        ("CLOUDLAND_API_DATABASE_URL", "mysql://x"),
        ("CLOUDLAND_API_DATABASE_URL", ""),
        ("CLOUDLAND_API_PORT", "70000"),
    ],
)
def test_bad_settings_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        ApiSettings.from_env({variable: value})


def test_migrations_create_the_tables(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sub' / 'c.db'}"
    upgrade(url)
    upgrade(url)  # a second start is a no-op
    engine = create_engine(url)
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert {"organisations", "users", "memberships", "flavors", "alembic_version"} <= tables


def test_signing_key_generated_once_with_mode_0600(tmp_path: Path) -> None:
    key = load_signing_key(tmp_path / "state")
    path = tmp_path / "state" / SIGNING_KEY_FILE
    assert len(key) >= 32
    assert mode(path) == 0o600
    assert load_signing_key(tmp_path / "state") == key


def test_short_signing_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / SIGNING_KEY_FILE).write_bytes(b"short")
    with pytest.raises(ConfigError, match=SIGNING_KEY_FILE):
        load_signing_key(tmp_path)


def test_admin_bootstrapped_only_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    upgrade(url)
    engine = make_engine(url)
    sessions = session_factory(engine)
    with sessions() as session:
        created = bootstrap_admin(session, tmp_path)
    assert created is not None and created.username == "admin"
    path = tmp_path / ADMIN_CREDENTIALS_FILE
    assert mode(path) == 0o600
    assert f"password={created.password}" in path.read_text()
    with sessions() as session:
        assert bootstrap_admin(session, tmp_path) is None
        users = session.query(User).all()
        assert [u.username for u in users] == ["admin"]
        assert verify_password(users[0].password_hash, created.password)
        assert created.password not in users[0].password_hash
    assert f"password={created.password}" in path.read_text()  # not rewritten
    engine.dispose()


def test_bootstrap_never_logs_the_password(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    upgrade(url)
    engine = make_engine(url)
    with caplog.at_level("DEBUG"), session_factory(engine)() as session:
        created = bootstrap_admin(session, tmp_path)
    assert created is not None
    assert created.password not in caplog.text
    engine.dispose()
