"""The API's memory under oversized bodies, measured on ``python -m cloudland_api`` as it runs
(uvicorn, real sockets), issue 15: four 50 MB bodies to the unauthenticated ``/login`` once took
it from 154 to 730 MiB. Now each is a 413 before it is read whole, and the resident set stays
where it was. The figures are printed (``pytest -s``) and quoted in api/README.md."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from cloudland_launcher.harness import free_port
from tests.integration.cloud import wait_serving

BODY = 50 * 10**6
MIB = 2**20


def rss_mib(pid: int) -> float:
    """The process's resident set (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


@pytest.fixture
def api_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """The API alone (no tree), on SQLite in a state dir of its own; killed afterwards, failing or not."""
    port = free_port()
    env = dict(os.environ, CLOUDLAND_API_ROOT_ENDPOINT="", CLOUDLAND_API_STATE_DIR=str(tmp_path / "state"),
               CLOUDLAND_API_DATABASE_URL=f"sqlite:///{tmp_path / 'cloudland.db'}", CLOUDLAND_API_PORT=str(port))
    with open(tmp_path / "api.out", "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cloudland_api"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_serving(base, proc, tmp_path / "api.out")
        yield proc, base
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_four_50_mb_bodies_to_login_leave_the_memory_where_it_was(
        api_process: tuple[subprocess.Popen[bytes], str]) -> None:
    proc, base = api_process
    payload = b"x" * BODY
    with httpx.Client(base_url=base, timeout=60) as client:
        for _ in range(20):  # warm up: the allocations of ordinary requests
            client.post("/api/v1/login", json={"username": "nobody", "password": "wrong"})
        before = rss_mib(proc.pid)
        statuses, after = [], []
        for declared in (True, False, True, False):
            def chunks() -> Iterator[bytes]:
                for start in range(0, BODY, MIB):
                    yield payload[start:start + MIB]

            # Declared: Content-Length, refused before a byte is read. Not: chunked, cut off at 1 MiB.
            content = payload if declared else chunks()
            try:
                reply = client.post("/api/v1/login", content=content, headers={"Content-Type": "application/json"})
                statuses.append(reply.status_code)
            except httpx.TransportError as exc:  # the server may close before the client sent everything
                statuses.append(type(exc).__name__)
            after.append(rss_mib(proc.pid))
        assert client.post("/api/v1/login", json={"username": "x", "password": "y"}).status_code == 401
    print(f"\nAPI RSS before: {before:.1f} MiB; after each 50 MB body to /login: "
          + ", ".join(f"{a:.1f}" for a in after) + f" MiB; answers {statuses}")
    assert statuses[0] == 413 and 413 in statuses[1:], statuses
    assert max(after) - before < 16, (before, after)
