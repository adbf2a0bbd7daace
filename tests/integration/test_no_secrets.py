"""Issue 15, must-show 2: after a scripted session (sign-in, console, image download, capture) on
a real tree and the API as its own process, no token or ticket appears in any file under the
state directories (the API's and the tree's: database, logs, keys) or in any process's command
line.

How it looks: the session's own secrets (two sign-ins' tokens, an image download token, the
console tickets) are searched for verbatim, and every file and command line also for anything
shaped like a JWT, which catches the tokens the API made for the agents and never showed the
test (each create's image download token, the capture's upload token: both crossed the tree).
Command lines are sampled every 20 ms throughout the session, so short-lived processes (each
``cloudland`` command, MPI launchers) are seen too. The console ticket did reach a URL, and
uvicorn logged that URL: the test checks it was logged, blanked (api/logs.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from cloudland_api.security import SIGNING_KEY_FILE, issue_image_token
from cloudland_launcher.harness import wait_for
from tests.integration.cloud import Cloud

pytestmark = pytest.mark.slow
JWT = re.compile(rb"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


class CommandLines(threading.Thread):
    """Every distinct command line of every process, sampled from /proc until ``finish``."""

    def __init__(self) -> None:
        super().__init__(daemon=True, name="cmdlines")
        self.seen: set[bytes] = set()
        self.samples = 0
        self._done = threading.Event()

    def sample(self) -> None:
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    self.seen.add(Path(entry.path, "cmdline").read_bytes())
                except OSError:
                    pass  # gone meanwhile
        self.samples += 1

    def run(self) -> None:
        while not self._done.wait(0.02):
            self.sample()

    def finish(self) -> None:
        self._done.set()
        self.join(10)
        self.sample()


def files_under(*roots: Path) -> dict[Path, bytes]:
    """Every regular file's bytes under ``roots``."""
    return {path: path.read_bytes() for root in roots for path in root.rglob("*")
            if path.is_file() and not path.is_symlink()}


def run_cli(cloud: Cloud, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``cloudland ARGS`` as a user runs it: its token in its own config file (outside the state
    directories), never on the command line."""
    env = dict(os.environ, CLOUDLAND_ENDPOINT=f"http://127.0.0.1:{cloud.port}", CLOUDLAND_CONFIG=str(config),
               COLUMNS="200")
    env.pop("CLOUDLAND_TOKEN", None)
    return subprocess.run([str(Path(sys.executable).parent / "cloudland"), *args], env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_no_token_in_any_state_file_or_command_line(make_cloud: Any, tmp_path: Path) -> None:
    lines = CommandLines()
    lines.start()
    try:
        cloud: Cloud = make_cloud(2)  # sign-in: the admin's POST /login
        assert cloud.http is not None
        used = {cloud.http.headers["Authorization"].split()[1]}
        config = tmp_path / "home" / "cli.json"
        done = run_cli(cloud, config, "login", "--credentials", str(cloud.state_dir / "admin-credentials"))
        assert done.returncode == 0, done
        stored = json.loads(config.read_text())["profiles"]["default"]["token"]
        used.add(stored)

        cloud.bootstrap()  # a flavor, an image uploaded
        cloud.wait_hypervisors(2)
        [image] = cloud.get("/images")["items"]
        # Image downloads: a user's, and a hypervisor's with a token for that one image.
        assert cloud.http.get(f"/images/{image['id']}/file").content == b"\0" * 4096
        key = (cloud.state_dir / SIGNING_KEY_FILE).read_bytes()
        image_token = issue_image_token(key, image["id"], 60)
        used.add(image_token)
        reply = cloud.http.get(f"/images/{image['id']}/download", headers={"Authorization": f"Bearer {image_token}"})
        assert reply.status_code == 200 and reply.content == b"\0" * 4096

        [vm] = cloud.post("/instances", {"name": "src", "flavor": "small", "image": "tiny"})["instances"]
        wait_for(lambda: cloud.get(f"/instances/{vm['id']}")["status"] == "running", 30, "src running")
        # The console: a browser's way (a one-time ticket in the URL), then the CLI's (the header).
        ticket = cloud.post(f"/instances/{vm['id']}/console/ticket")["ticket"]
        used.add(ticket)
        with connect(f"ws://127.0.0.1:{cloud.port}/api/v1/instances/{vm['id']}/console?ticket={ticket}") as ws:
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=30)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1011  # let in; a test domain has no log
        done = run_cli(cloud, config, "vm", "console", "src", "--read-only")
        assert done.returncode == 1 and "has no serial console log" in done.stderr, done

        # A capture: the job carries an upload token through the tree to the hypervisor.
        assert run_cli(cloud, config, "vm", "stop", "src", "--force").returncode == 0
        done = run_cli(cloud, config, "vm", "capture", "src", "golden")
        assert done.returncode == 1 and "has no disk to capture" in " ".join(done.stdout.split()), done
        cloud.stop_api()  # its last lines are in api.out
    finally:
        lines.finish()

    files = files_under(cloud.state_dir, cloud.tree.state_dir)
    names = {path.name for path in files}
    assert {"api.out", "root.out", "cloudland.db", "admin-credentials"} <= names, names
    assert any(path.parent.name == "logs" for path in files), names  # the ranks' logs
    assert lines.samples > 10 and any(b"cloudland_api" in line for line in lines.seen)
    found = []
    for where, data in [*((str(p), d) for p, d in files.items()),
                        *((f"command line {line[:120]!r}", line) for line in lines.seen)]:
        found += [(where, secret[:12] + "...") for secret in used if secret.encode() in data]
        found += [(where, match[:40].decode() + "...") for match in JWT.findall(data)]
    assert found == [], found
    # The ticket's URL was logged, and blanked.
    api_out = (cloud.state_dir / "api.out").read_text()
    assert f"/api/v1/instances/{vm['id']}/console?ticket=[redacted]" in api_out, api_out[-2000:]
