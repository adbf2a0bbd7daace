"""Must show 3 (issue 15): ``cloudland up`` brings back a root or an API killed with SIGKILL in the
middle of ``vm create --count 1000``, by itself, and the batch ends with every VM made exactly once.

One ``cloudland up`` (60 simulated hypervisors, 6 per leaf rank, SQLite) serves both tests, in
order: the root is killed during the first batch, the API during the second. Each test runs the
real CLI, which waits for its jobs as an operator's would (and, while the API is down, waits for
it), and checks afterwards, against libvirt itself (``vm.list`` through the tree):
- every job of the batch terminal and succeeded; 1,000 instances, all ``running``;
- every instance's domain on exactly the hypervisor the API names, once, and no other domain:
  none lost, none made twice;
- the killed part came back with no one's help, within its bound; for the root, the ranks
  (and with them the simulated hypervisors' VMs) are the same processes as before.

Measured on this machine (2 cores shared with other test runs), with the bounds the tests hold:
see the ``print`` lines (``pytest -s``) and docs/architecture.md, "Supervision".
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from cloudland_launcher.harness import wait_for
from tests.upcloud import UpCloud, start_up, stop_up

# Beside a CPU hog (tests/hog.py): the bounds hold on a loaded machine, not only an idle one (issue 15).
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("cpu_hog")]

HYPERVISORS, PER_LEAF, COUNT = 60, 6, 1000
TREE_BACK_S = 10.0    # must show 3: the tree whole again, every hypervisor answering, by then
API_BACK_S = 60.0     # the API answering HTTP again after its kill: 5 s at load 25, 27 s at load 46 on 2 cores
BATCH_S = 600.0       # the CLI's whole wait, kill included; measured well below (see the prints)
RECONCILE_S = 120.0   # VMs of a leaf that aborted with the root defined again by the reconciler


@pytest.fixture(scope="module")
def up_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpCloud]:
    cloud = start_up(tmp_path_factory.mktemp("supervised"), HYPERVISORS, PER_LEAF)
    yield cloud
    stop_up(cloud)


def batch_of(cloud: UpCloud, name: str) -> str:
    """The batch that creates ``name-1`` .. ``name-COUNT`` once it exists ("" before)."""
    last = cloud.get("/instances", name=f"{name}-{COUNT}", limit=1)["items"]
    if not last:
        return ""
    jobs = cloud.get("/jobs", limit=50)["items"]  # newest first: the batch's last create is near the top
    return next(j["batch"] for j in jobs if j["instance_id"] == last[0]["id"] and j["action"] == "create")


def start_batch(cloud: UpCloud, name: str) -> tuple[subprocess.Popen[str], str]:
    """``vm create NAME --count 1000`` as the operator runs it; returns it and its batch once
    its first jobs have succeeded (and well before its last)."""
    cli = cloud.cli("vm", "create", name, "--flavor", "small", "--image", "tiny", "--count", str(COUNT))
    wait_for(lambda: cli.poll() is not None or batch_of(cloud, name), 120, f"the batch of {name}")
    assert cli.poll() is None, f"vm create ended early with {cli.returncode}: {cli.communicate()}"
    batch = batch_of(cloud, name)
    wait_for(lambda: cloud.counts(batch)["succeeded"] >= 30, 120, "the batch's first VMs", every=0.02)
    return cli, batch


def check_batch(cloud: UpCloud, cli: subprocess.Popen[str], batch: str, name: str) -> None:
    """The CLI ended 0 and said so; every job succeeded; libvirt holds each VM once, where the API says."""
    stdout, stderr = cli.communicate(timeout=BATCH_S)
    assert cli.returncode == 0, f"vm create exited {cli.returncode}:\n{stdout}\n{stderr}"
    assert f"{COUNT} created" in stdout, stdout
    counts = cloud.counts(batch)
    assert counts == Counter({"succeeded": COUNT}), counts
    vms = cloud.instances(name=f"{name}-*")
    assert len(vms) == COUNT and Counter(v["status"] for v in vms) == Counter({"running": COUNT})

    def misplaced() -> dict[str, Any]:
        where = cloud.domains()
        return {v["name"]: where.get(f"cl-{v['uuid']}") for v in vms
                if where.get(f"cl-{v['uuid']}") != [(v["hypervisor_id"], "running")]}

    # A leaf that had replies in flight to the dying root may have aborted (MPICH takes that
    # for fatal; docs/architecture.md "Supervision"): its simulated VMs went with it, and the
    # reconciler defines them again where they were. Give it that long.
    wait_for(lambda: not misplaced(), RECONCILE_S, "every VM's domain exactly once, running, where the API says")
    twice = {name: copies for name, copies in cloud.domains().items() if len(copies) > 1}
    assert not twice, f"no domain may exist twice: {list(twice.items())[:5]}"


def test_root_killed_mid_batch_comes_back_by_itself_and_loses_nothing(up_cloud: UpCloud) -> None:
    cloud = up_cloud
    ranks = {node: p.pid for node, p in cloud.ranks().items()}
    agent = [h.pid for h in cloud.root.hosts().hosts]
    cli, batch = start_batch(cloud, "r")
    old_root = cloud.root.health().peers[0].pid
    at_kill = cloud.counts(batch)
    os.kill(old_root, signal.SIGKILL)
    killed = time.monotonic()
    assert at_kill["succeeded"] < COUNT, f"the kill came too late to test anything: {at_kill}"

    wait_for(lambda: cloud.tree_whole(old_root), 60, "the tree whole again under a new root", every=0.05)
    back = time.monotonic() - killed
    restarted = sorted(node for node, p in cloud.ranks().items() if ranks.get(node) != p.pid)
    assert [h.pid for h in cloud.root.hosts().hosts] == agent, \
        "the new root took over the host agent (and its ranks); it did not start one of its own"
    check_batch(cloud, cli, batch, "r")
    ended = time.monotonic() - killed
    assert "started the tree's root again" in cloud.output()
    print(f"root killed at {dict(at_kill)}: tree whole again after {back:.1f} s, batch ended and every VM "
          f"in place {ended:.1f} s after the kill; leaves that aborted with it: {restarted or 'none'} of "
          f"{len(ranks)}; load {os.getloadavg()[0]:.1f}")
    assert back <= TREE_BACK_S, f"the tree took {back:.1f} s to be whole again (bound {TREE_BACK_S} s)"


def test_api_killed_mid_batch_comes_back_by_itself_and_loses_nothing(up_cloud: UpCloud) -> None:
    cloud = up_cloud
    cli, batch = start_batch(cloud, "a")
    old_api = int((cloud.state_dir / "api.pid").read_text())
    root_pid = cloud.root.health().peers[0].pid
    at_kill = cloud.counts(batch)
    os.kill(old_api, signal.SIGKILL)
    killed = time.monotonic()
    assert at_kill["succeeded"] < COUNT, f"the kill came too late to test anything: {at_kill}"

    wait_for(lambda: not cloud.answers(), 10, "the killed API to stop answering", every=0.05)
    wait_for(cloud.answers, 120, "the API to answer again", every=0.1)
    back = time.monotonic() - killed
    assert int((cloud.state_dir / "api.pid").read_text()) != old_api
    assert cloud.root.health().peers[0].pid == root_pid, "the tree keeps running through the API's restart"
    check_batch(cloud, cli, batch, "a")
    ended = time.monotonic() - killed
    assert "started the API again" in cloud.output()
    print(f"API killed at {dict(at_kill)}: answering again after {back:.1f} s, "
          f"batch ended {ended:.1f} s after the kill; load {os.getloadavg()[0]:.1f}")
    assert back <= API_BACK_S, f"the API took {back:.1f} s to answer again (bound {API_BACK_S} s)"
