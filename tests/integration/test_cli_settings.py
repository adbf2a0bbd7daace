"""Where the CLI finds its cloud (issue 16): ``CLOUDLAND_ENDPOINT`` alone, and named profiles
pointing at two clouds. Each cloud is a real ``python -m cloudland_api`` on its own SQLite file
(no tree: flavors need none), and the CLI runs as the user runs it, a process of its own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudland_launcher.harness import free_port
from tests.integration.cloud import wait_serving


class ApiProcess:
    """One API process; ``credentials`` is its admin-credentials file."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.url = f"http://127.0.0.1:{free_port()}"
        env = {**os.environ, "CLOUDLAND_API_ROOT_ENDPOINT": "", "CLOUDLAND_API_STATE_DIR": str(state_dir),
               "CLOUDLAND_API_DATABASE_URL": f"sqlite:///{state_dir / 'cloudland.db'}",
               "CLOUDLAND_API_PORT": self.url.rsplit(":", 1)[1]}
        state_dir.mkdir(parents=True)
        with open(state_dir / "api.out", "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "cloudland_api"], env=env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        wait_serving(self.url, self.proc, state_dir / "api.out")

    @property
    def credentials(self) -> Path:
        return self.state_dir / "admin-credentials"

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=15)


@pytest.fixture
def two_clouds(tmp_path: Path) -> Iterator[tuple[ApiProcess, ApiProcess]]:
    clouds: list[ApiProcess] = []
    try:
        clouds += [ApiProcess(tmp_path / "a"), ApiProcess(tmp_path / "b")]
        yield clouds[0], clouds[1]
    finally:
        for cloud in clouds:
            cloud.stop()


def run(config: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``cloudland ARGS`` with only the CLOUDLAND_* variables given (and a config file of its own)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDLAND_")}
    return subprocess.run([sys.executable, "-m", "cloudland_cli", *args], capture_output=True, text=True,
                          timeout=60, env={**clean, "CLOUDLAND_CONFIG": str(config), **env})


def cli(config: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    done = run(config, *args, **env)
    assert done.returncode == 0, f"cloudland {' '.join(args)}: {done.stderr}"
    return done


def flavor_names(config: Path, *args: str, **env: str) -> set[str]:
    listed = json.loads(cli(config, *args, "flavor", "list", "--json", **env).stdout)
    items = listed["items"] if isinstance(listed, dict) else listed  # either list shape (issue 16)
    return {f["name"] for f in items}


def test_only_cloudland_endpoint_reaches_the_cloud(two_clouds: tuple[ApiProcess, ApiProcess], tmp_path: Path) -> None:
    _, b = two_clouds
    config = tmp_path / "endpoint-only" / "cli.json"
    login = cli(config, "login", "--credentials", str(b.credentials), CLOUDLAND_ENDPOINT=b.url)
    assert f"logged in to {b.url}" in login.stdout
    cli(config, "flavor", "create", "on-b", "--vcpus", "1", "--memory-mib", "64", CLOUDLAND_ENDPOINT=b.url)
    assert "on-b" in flavor_names(config, CLOUDLAND_ENDPOINT=b.url)
    assert oct(config.stat().st_mode & 0o777) == "0o600"


def test_two_profiles_reach_two_clouds(two_clouds: tuple[ApiProcess, ApiProcess], tmp_path: Path) -> None:
    a, b = two_clouds
    config = tmp_path / "profiles" / "cli.json"
    cli(config, "configure", "--profile", "a", "--endpoint", a.url)
    cli(config, "configure", "--profile", "b", "--endpoint", b.url, "--grpc", "127.0.0.1:1")
    cli(config, "--profile", "a", "login", "--credentials", str(a.credentials))
    cli(config, "login", "--credentials", str(b.credentials), CLOUDLAND_PROFILE="b")
    cli(config, "--profile", "a", "flavor", "create", "only-a", "--vcpus", "1", "--memory-mib", "64")
    cli(config, "flavor", "create", "only-b", "--vcpus", "1", "--memory-mib", "64", CLOUDLAND_PROFILE="b")
    assert "only-a" in flavor_names(config, "--profile", "a") - flavor_names(config, "--profile", "b")
    assert "only-b" in flavor_names(config, CLOUDLAND_PROFILE="b") - flavor_names(config, CLOUDLAND_PROFILE="a")
    # --use makes b the profile of commands that choose none; the tree commands find b's root.
    cli(config, "configure", "--profile", "b", "--use")
    assert "only-b" in flavor_names(config)
    shown = json.loads(cli(config, "configure", "--json").stdout)
    assert (shown["profile"], shown["endpoint"], shown["grpc"], shown["logged_in"]) == ("b", b.url, "127.0.0.1:1", True)
    health = run(config, "tree", "health")
    assert health.returncode == 3 and "cannot reach the root at 127.0.0.1:1" in health.stderr
    assert oct(config.stat().st_mode & 0o777) == "0o600"
