"""Issue "must show" #1 end to end: ``cloudland up`` in a terminal, the README's CLI commands, Ctrl-C.

``cloudland up`` (what ``make run`` starts) runs in a real tmux pane, so Rich sees a
terminal and Ctrl-C arrives as a keystroke. The CLI commands run as their own processes
with a private config (CLOUDLAND_CONFIG under tmp_path), except the 20-VM ``vm create``,
which runs in a second tmux pane so that the test sees what a person sees: the progress
bar (stderr, transient) while the jobs run, then the summary line. After Ctrl-C no rank
and no API process may be left, and nothing may listen on the API's or the root's port.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from cloudland.client import RootClient
from cloudland_launcher.harness import free_port, wait_for
from tests.integration.test_cli_tree import (
    BIN,
    REPO,
    TmuxPane,
    clean_env,
    described,
    described_pids,
    descendants,
    kill_leftovers,
    living,
    one_line,
)

BANNER = "CloudLand is up"
BANNER_END = "Ctrl-C stops the API, then the tree."  # the banner's last line
HYPERVISORS = 8
COUNT = 20
# The bar as Rich draws it: label, bar glyphs, "done/total", elapsed time.
PROGRESS_BAR = re.compile(r"creating\s+[━╺╸]+\s+(\d+)/\d+\s+\d+:\d\d:\d\d")


class Cli:
    """``cloudland ARGS...`` as its own process, with the test's own CLI config."""

    def __init__(self, config: Path) -> None:
        self.config = config

    def env(self, **extra: str) -> dict[str, str]:
        # Wide COLUMNS: Rich wraps at 80 columns when stdout is a pipe.
        return clean_env() | {"CLOUDLAND_CONFIG": str(self.config), "COLUMNS": "200"} | extra

    def __call__(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "cloudland"), *args], cwd=REPO, env=self.env(**extra),
                              capture_output=True, text=True, timeout=60)

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = self(*args)
        assert result.returncode == 0, f"cloudland {shlex.join(args)}: {described(result)}"
        return result

    def vms(self) -> list[dict[str, Any]]:
        vms: list[dict[str, Any]] = json.loads(self.ok("vm", "list", "--json").stdout)["items"]
        return vms


def listening(port: int) -> bool:
    """True if something accepts TCP connections on 127.0.0.1:port."""
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


def watch_progress(pane: TmuxPane, timeout: float) -> tuple[list[str], str]:
    """Every distinct progress-bar line the pane showed until its command ended, and its last screen."""
    bars: list[str] = []
    end = time.monotonic() + timeout
    while pane.exit_status() is None:
        assert time.monotonic() < end, f"vm create still running after {timeout} s:\n{pane.screen()[-3000:]}"
        for line in pane.screen().splitlines():
            if PROGRESS_BAR.search(line) and line.strip() not in bars:
                bars.append(line.strip())
        time.sleep(0.03)
    return bars, pane.screen()


@pytest.mark.timeout(180)
def test_cloudland_up_then_readme_commands_in_tmux(tmp_path: Path) -> None:
    grpc_port, api_port = free_port(), free_port()
    grpc, url = f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{api_port}"
    state_dir = tmp_path / "var"
    credentials = state_dir / "admin-credentials"
    cli = Cli(tmp_path / "cli.json")
    socket_name = f"cloudland-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    up = TmuxPane(socket=socket_name, session="up")
    up_pid: int | None = None
    seen: set[int] = set()
    try:
        up.start([str(BIN / "cloudland"), "up", "--hypervisors", str(HYPERVISORS), "--grpc", grpc,
                  "--api-port", str(api_port), "--state-dir", str(state_dir)],
                 cwd=REPO, config=tmp_path / "tmux.conf")
        up_pid = up.pid()

        # -- the banner -------------------------------------------------------------------
        banner = one_line(up.wait_for_text(BANNER_END, timeout=120))
        assert BANNER in banner, banner
        assert f"API {url}" in banner and f"tree gRPC {grpc}" in banner, banner
        assert re.search(rf"\bhypervisors {HYPERVISORS} \(1 per leaf rank\)", banner), banner
        assert f"admin credentials: {credentials} (mode 0600)" in banner, banner
        assert f"cloudland configure --endpoint {url}" in banner, banner
        assert f"cloudland login --credentials {credentials}" in banner, banner
        assert f"cloudland vm create web --flavor small --image tiny --count {COUNT}" in banner, banner
        assert "cloudland vm delete --name 'web-*'" in banner, banner
        assert credentials.stat().st_mode & 0o777 == 0o600

        # -- exit codes before login: 4 without a token, 3 without an API ----------------------
        result = cli("vm", "list")
        assert result.returncode == 4, described(result)
        assert "not logged in" in result.stderr, described(result)
        result = cli("vm", "list", CLOUDLAND_ENDPOINT=f"http://127.0.0.1:{free_port()}",
                     CLOUDLAND_TOKEN="not-a-token")
        assert result.returncode == 3, described(result)
        assert result.stderr.startswith("cloudland: cannot reach the API at"), described(result)

        # -- the banner's commands, in its order ------------------------------------------
        result = cli.ok("configure", "--endpoint", url)
        assert url in result.stdout, described(result)
        result = cli.ok("login", "--credentials", str(credentials))
        assert f"logged in to {url} as admin" in result.stdout, described(result)
        assert cli.config.stat().st_mode & 0o777 == 0o600

        result = cli.ok("flavor", "create", "small", "--vcpus", "1", "--memory-mib", "512", "--disk-gib", "1")
        assert re.search(r"flavor \d+ small created", result.stdout), described(result)
        image = tmp_path / "tiny.img"
        image.write_bytes(os.urandom(1 << 20))
        result = cli.ok("image", "upload", str(image), "--name", "tiny", "--format", "raw")
        assert re.search(r"image \d+ tiny active, 1048576 bytes", result.stdout), described(result)

        # An unknown flavor is bad input: exit 2 and one line naming it; nothing is created.
        result = cli("vm", "create", "web", "--flavor", "nosuch", "--image", "tiny", "--count", str(COUNT))
        assert result.returncode == 2, described(result)
        assert result.stdout == "", described(result)
        assert result.stderr.count("\n") == 1 and "flavor 'nosuch'" in result.stderr, described(result)
        assert cli.vms() == []

        # vm create in a pane of its own: the progress bar shows while the jobs run, then goes.
        creator = TmuxPane(socket=socket_name, session="create")
        creator.start(["env", f"CLOUDLAND_CONFIG={cli.config}", str(BIN / "cloudland"), "vm", "create", "web",
                       "--flavor", "small", "--image", "tiny", "--count", str(COUNT)],
                      cwd=REPO, config=tmp_path / "tmux-create.conf")
        bars, screen = watch_progress(creator, timeout=60)
        assert creator.exit_status() == 0, f"vm create exited {creator.exit_status()}:\n{screen}"
        assert re.search(rf"^batch \w+: creating {COUNT} VMs$", screen, re.M), screen
        assert re.search(rf"^{COUNT} created in \d+\.\d s$", screen, re.M), screen
        assert not PROGRESS_BAR.search(screen), f"the bar is transient, yet it stayed:\n{screen}"
        if not bars:
            # 20 creates can end within one poll (0.1 s here): the bar flashes by. 1000 take
            # long enough for the screen to be caught with the bar on it.
            bulk = TmuxPane(socket=socket_name, session="bulk")
            bulk.start(["env", f"CLOUDLAND_CONFIG={cli.config}", str(BIN / "cloudland"), "vm", "create", "bulk",
                        "--flavor", "small", "--image", "tiny", "--count", "1000"],
                       cwd=REPO, config=tmp_path / "tmux-bulk.conf")
            bars, bulk_screen = watch_progress(bulk, timeout=120)
            assert bulk.exit_status() == 0 and re.search(r"^1000 created in ", bulk_screen, re.M), bulk_screen
            assert cli.ok("vm", "delete", "--name", "bulk-*", "--yes").returncode == 0
        assert bars, f"no progress bar seen while vm create ran; its last screen:\n{screen}"
        print(f"\nprogress bar seen {len(bars)} time(s), e.g. {bars[0]!r}")

        vms = cli.vms()
        assert sorted(v["name"] for v in vms) == sorted(f"web-{i}" for i in range(1, COUNT + 1)), vms
        assert {v["status"] for v in vms} == {"running"}, vms
        result = cli.ok("vm", "list")
        assert f"{COUNT} VMs" in result.stdout and "web-20" in result.stdout, described(result)
        result = cli.ok("hyper", "list")
        assert len(re.findall(r"sim-\d+\W+up\W+yes\b", result.stdout)) == HYPERVISORS, described(result)

        result = cli.ok("vm", "stop", "--name", "web-*")
        assert re.search(rf"^{COUNT} stopped in ", result.stdout, re.M), described(result)
        vms = cli.vms()
        assert len(vms) == COUNT and {v["status"] for v in vms} == {"stopped"}, vms

        # Many VMs by a pattern: asked on a terminal; with none to ask on, only --yes deletes (issue 16).
        result = cli("vm", "delete", "--name", "web-*")
        assert result.returncode == 2 and "pass --yes" in result.stderr, described(result)
        assert len(cli.vms()) == COUNT
        result = cli.ok("vm", "delete", "--name", "web-*", "--yes")
        assert re.search(rf"^{COUNT} deleted in ", result.stdout, re.M), described(result)
        assert cli.vms() == []

        # -- Ctrl-C: the API, then the tree, and nothing left --------------------------------
        with RootClient(grpc) as client:
            rank_pids = {peer.pid for peer in client.health().peers}
        assert len(rank_pids) == HYPERVISORS + 1, rank_pids  # the root and one leaf rank per hypervisor
        below_up = descendants(up_pid)  # the API, the ranks and Open MPI's daemon (prte)
        api_pids = {pid for pid in below_up if "-m cloudland_api" in cmdline(pid)}
        seen = rank_pids | below_up
        assert len(api_pids) == 1, described_pids(below_up)
        assert rank_pids <= below_up, f"ranks outside up's process tree: {sorted(rank_pids - below_up)}"
        assert listening(api_port) and listening(grpc_port)

        up.tmux("send-keys", "-t", up.session, "C-c")
        stopped_at = time.monotonic()
        wait_for(lambda: up.exit_status() is not None, timeout=30, what="cloudland up to end after Ctrl-C")
        stop_seconds = time.monotonic() - stopped_at
        assert up.exit_status() == 0, f"cloudland up exited with {up.exit_status()}:\n{up.screen()[-3000:]}"
        assert "stopping the API, then the tree" in up.screen()
        # up waits for the API and the root, and the root for its ranks: none may be left.
        left = living(rank_pids | api_pids)
        assert left == [], f"alive {stop_seconds:.1f} s after Ctrl-C: {described_pids(left)}"
        assert not listening(api_port), f"something still listens on the API's port {api_port}"
        assert not listening(grpc_port), f"something still listens on the root's port {grpc_port}"
        # Open MPI's daemon (prte) ends on its own shortly after the root (see test_cli_tree.py).
        try:
            wait_for(lambda: not living(seen), timeout=10, what="Open MPI's daemon to end")
        except AssertionError:
            raise AssertionError(f"alive 10 s after cloudland up ended: {described_pids(living(seen))}") from None
        print(f"cloudland up stopped in {stop_seconds:.1f} s after Ctrl-C")
    finally:
        if up_pid is not None:
            seen |= descendants(up_pid)
        up.kill_server()  # SIGHUP to cloudland up, which stops API and tree like Ctrl-C
        try:
            wait_for(lambda: not living(seen), timeout=20, what="processes to end after kill-server")
        except AssertionError:
            kill_leftovers(seen)
