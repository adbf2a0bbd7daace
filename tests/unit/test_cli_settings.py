"""The CLI's config file (cli/settings.py): profiles, the older flat shape, mode 0600, and which
profile and endpoint are in force."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cloudland.errors import ConfigError
from cloudland_cli import main, settings
from cloudland_cli.settings import CliConfig, ProfileStore, root_endpoint, root_pki


@pytest.fixture(autouse=True)
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "cloudland" / "cli.json"
    for name in ("CLOUDLAND_ENDPOINT", "CLOUDLAND_TOKEN", "CLOUDLAND_GRPC", "CLOUDLAND_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLOUDLAND_CONFIG", str(path))
    monkeypatch.setattr(settings, "chosen_profile", None)
    yield path


def test_profiles_are_kept_apart_and_private(config: Path) -> None:
    CliConfig(endpoint="http://a:8080", token="ta", profile="a").save()
    CliConfig(endpoint="http://b:8080", grpc="b:50551", profile="b").save()
    assert oct(config.stat().st_mode & 0o777) == "0o600"
    assert CliConfig.load(profile="a").token == "ta" and CliConfig.load(profile="b").grpc == "b:50551"
    assert set(json.loads(config.read_text())["profiles"]) == {"a", "b"}


def test_the_older_flat_file_reads_as_the_default_profile(config: Path) -> None:
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps({"endpoint": "http://old:8080", "token": "t", "expires_at": None}))
    loaded = CliConfig.load()
    assert (loaded.profile, loaded.endpoint, loaded.token) == ("default", "http://old:8080", "t")


def test_chosen_then_environment_then_current(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("a", "b", "c"):
        CliConfig(endpoint=f"http://{name}:1", profile=name).save()
    store = ProfileStore.load()
    store.current = "c"
    store.save()
    assert CliConfig.load().profile == "c"
    monkeypatch.setenv("CLOUDLAND_PROFILE", "b")
    assert CliConfig.load().profile == "b"
    monkeypatch.setattr(settings, "chosen_profile", "a")
    assert CliConfig.load().profile == "a"


def test_an_unknown_profile_is_an_error_not_the_default_cloud(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDLAND_PROFILE", "typo")
    with pytest.raises(ConfigError, match="no profile 'typo'.*configure --profile typo"):
        CliConfig.load()
    result = CliRunner().invoke(main.app, ["vm", "list"])
    assert result.exit_code == 2 and result.stderr.startswith("cloudland: no profile 'typo'")
    result = CliRunner().invoke(main.app, ["tree", "health"])
    assert result.exit_code == 2 and result.stderr.startswith("cloudland: no profile 'typo'")


def test_environment_overrides_the_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    CliConfig(endpoint="http://a:8080", token="ta", grpc="a:1").save()
    monkeypatch.setenv("CLOUDLAND_ENDPOINT", "http://env:9")
    monkeypatch.setenv("CLOUDLAND_GRPC", "env:2")
    effective = CliConfig.load().effective()
    assert (effective.endpoint, effective.token, effective.grpc) == ("http://env:9", "ta", "env:2")
    assert root_endpoint() == "env:2" and root_endpoint("flag:3") == "flag:3"


@pytest.mark.parametrize("url", ["ftp://x", "http://", "http://h:notaport", "nonsense"])
def test_bad_endpoints_are_refused(url: str) -> None:
    assert CliRunner().invoke(main.app, ["configure", "--endpoint", url]).exit_code == 2


def test_a_profile_names_where_its_roots_control_certificate_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`tree` and `cluster` present the control certificate of $CLOUDLAND_PKI, else the
    profile's ``pki``, else the all-in-one cloud's (issue 15)."""
    monkeypatch.setenv("CLOUDLAND_CONFIG", str(tmp_path / "cli.json"))
    monkeypatch.delenv("CLOUDLAND_PKI", raising=False)
    monkeypatch.delenv("CLOUDLAND_STATE_DIR", raising=False)
    monkeypatch.delenv("CLOUDLAND_PROFILE", raising=False)
    assert root_pki() == Path("var/pki")
    CliConfig(endpoint="http://a:8080", grpc="a:1", pki="/lab/pki").save()
    assert root_pki() == Path("/lab/pki") and CliConfig.load().pki == "/lab/pki", "stored with the profile"
    monkeypatch.setenv("CLOUDLAND_PKI", "/env/pki")
    assert root_pki() == Path("/env/pki")
