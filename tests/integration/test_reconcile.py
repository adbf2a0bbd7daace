"""The reconciler converges: VMs whose domains vanished are defined and started again, on the
same hypervisor, with no job by hand (docs/architecture.md "Reconciler")."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from typing import Any

import pytest

from cloudland_launcher.harness import wait_for
from tests.integration.cloud import Cloud

pytestmark = pytest.mark.slow


def test_a_killed_leafs_vms_run_again_on_the_same_hypervisors(make_cloud: Any) -> None:
    """kill -9 a leaf rank hosting simulated hypervisors: its in-memory domains die with it.
    Within 30 s every VM that should run runs again where it was, and a stopped one is defined
    again and stays stopped, through jobs the reconciler made."""
    cloud: Cloud = make_cloud(8, per_leaf=4)
    cloud.bootstrap()
    cloud.wait_hypervisors(8)
    accepted = cloud.post("/instances", {"name": "heal", "flavor": "small", "image": "tiny", "count": 8})
    assert cloud.wait_batch(accepted["batch"], 8)["succeeded"] == 8
    # The leaf that holds the most of them (spread weighs free memory: hosts differ in size).
    leaf = Counter(v["hypervisor_id"] // 4 for v in cloud.instances(name="heal-*")).most_common(1)[0][0]
    stop = next(v for v in cloud.instances(name="heal-*") if v["hypervisor_id"] // 4 == leaf)
    stopping = cloud.post(f"/instances/{stop['id']}/stop")
    assert cloud.get(f"/jobs/{stopping['id']}", wait=30)["state"] == "succeeded"
    vms = {v["uuid"]: v for v in cloud.instances(name="heal-*")}
    on_victim = {u: v for u, v in vms.items() if v["hypervisor_id"] // 4 == leaf}
    assert len(on_victim) >= 2, f"spread puts some of 8 VMs on leaf {leaf}'s hypervisors"

    victim = cloud.tree.peers()[f"leaf {leaf}"]
    os.kill(victim.pid, signal.SIGKILL)
    killed_at = time.monotonic()

    def converged() -> bool:
        try:
            domains = cloud.domains()
        except AssertionError:  # the leaf is still coming back: its hypervisors answer UNAVAILABLE
            return False
        held = {vm["name"]: (hv, vm["state"]) for hv, found in domains.items() for vm in found}
        want = {"running": "running", "stopped": "shutoff"}
        return all(held.get(f"cl-{u}") == (v["hypervisor_id"], want[v["status"]]) for u, v in vms.items())

    wait_for(converged, 30, "every VM to be back on its own hypervisor, running or stopped as before", every=0.5)
    took = time.monotonic() - killed_at
    recovered = [j for j in cloud.get("/jobs", limit=500)["items"] if j["action"] == "recover"]
    assert {j["instance_id"] for j in recovered if j["state"] == "succeeded"} == {v["id"] for v in on_victim.values()}
    assert all(j["batch"].startswith("reconcile") for j in recovered)
    after = {v["uuid"]: v for v in cloud.instances(name="heal-*")}
    assert {u: (v["hypervisor_id"], v["status"]) for u, v in after.items()} == {
        u: (v["hypervisor_id"], v["status"]) for u, v in vms.items()}
    print(f"healed: {len(on_victim)} VMs back {took:.1f} s after the kill")
