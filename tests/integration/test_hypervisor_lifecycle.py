"""Hypervisors the tree no longer has, through the real tree and the API process: the API sees 4
hypervisors, the tree is restarted with 2 under it, and the missing 2 become ``gone``; their VMs
keep their status, refuse to start saying why, and are deleted at once with the live ones (which
the reconciler brought back on the new tree's empty hosts) by one CLI command; then a drained, emptied host is removed and is placed on no more.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from cloudland_launcher import harness
from cloudland_launcher.harness import stop_tree, wait_for
from tests.integration.cloud import Cloud

pytestmark = pytest.mark.slow


def described(done: Any) -> str:
    return f"exit {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}"


def restart_tree(cloud: Cloud, make_tree: Any, monkeypatch: pytest.MonkeyPatch, hypervisors: int) -> None:
    """Stop the cloud's tree and start one of ``hypervisors`` at the same address; the API keeps
    running and keeps its root endpoint, as in production when the tree is restarted alone.
    (The harness picks a free port for each tree; it is asked for the old one here.)"""
    port = int(cloud.tree.endpoint.rsplit(":", 1)[1])
    stop_tree(cloud.tree)
    with monkeypatch.context() as patch:
        patch.setattr(harness, "free_port", lambda: port)
        cloud.tree = make_tree(hypervisors, 1, 32, 0.5)


def test_a_tree_restarted_with_fewer_hypervisors(make_cloud: Any, make_tree: Any,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    cloud: Cloud = make_cloud(4)
    cloud.bootstrap()
    cloud.wait_hypervisors(4)
    batch = cloud.post("/instances", {"name": "web", "flavor": "small", "image": "tiny", "count": 8})["batch"]
    assert cloud.wait_batch(batch, 8)["succeeded"] == 8
    vms = cloud.instances(name="web-*")
    lost = sorted((v for v in vms if v["hypervisor_id"] >= 2), key=lambda v: v["id"])
    live = [v for v in vms if v["hypervisor_id"] < 2]
    assert lost and live, f"spread puts VMs on all 4 hosts: {Counter(v['hypervisor_id'] for v in vms)}"

    restart_tree(cloud, make_tree, monkeypatch, 2)
    expected = {0: "up", 1: "up", 2: "gone", 3: "gone"}
    wait_for(lambda: {h["id"]: h["state"] for h in cloud.hypervisors()} == expected, 60,
             "hypervisors 2 and 3 to be gone in the API", every=0.25)
    assert "event=hypervisor_gone hypervisor=2" in cloud.log() and "event=hypervisor_gone hypervisor=3" in cloud.log()
    # The new tree's simulated hosts start empty: the VMs on 0 and 1 lost their domains, which the
    # reconciler defines and starts again there once they have settled (recover jobs); the VMs on
    # the gone hosts keep their status meanwhile: nothing is known of them.
    def recovered() -> bool:
        held = {(hv, vm["name"]) for hv, found in cloud.domains().items() for vm in found}
        return all((v["hypervisor_id"], f"cl-{v['uuid']}") in held for v in live)

    wait_for(recovered, 60, "the VMs on the live hosts to be back on them", every=0.5)
    recovers = [j for j in cloud.get("/jobs", limit=100)["items"] if j["action"] == "recover"]
    assert sorted(j["instance_id"] for j in recovers) == sorted(v["id"] for v in live)
    wait_for(lambda: {v["status"] for v in cloud.instances(name="web-*") if v["hypervisor_id"] < 2} == {"running"},
             10, "the recovered VMs running")
    now = {v["id"]: v for v in cloud.instances(name="web-*")}
    assert {now[v["id"]]["status"] for v in lost} == {"running"}
    assert all(now[v["id"]]["status_reason"] is None for v in lost)
    claims = {h["id"]: h["vcpus_claimed"] for h in cloud.hypervisors()}
    assert claims[2] + claims[3] == len(lost)  # still held: the VMs are still in the database

    victim = lost[0]
    host = victim["hypervisor_id"]
    done = cloud.cli("vm", "start", victim["name"])
    assert done.returncode == 2, described(done)
    assert done.stderr.strip() == (f"cloudland: cannot start instance {victim['id']} ({victim['name']}): hypervisor "
                                   f"{host} is gone (the tree no longer has it); its VMs can only be deleted")
    done = cloud.cli("hyper", "drain", str(host))
    names = [v["name"] for v in lost if v["hypervisor_id"] == host]
    assert done.returncode == 0 and done.stdout.strip() == (
        f"hypervisor {host} drained: {len(names)} VM{'s' if len(names) > 1 else ''} "
        f"remain{'' if len(names) > 1 else 's'}: {', '.join(names)}"), described(done)
    drained = json.loads(cloud.cli("hyper", "drain", str(host), "--json").stdout)  # again: the same
    assert drained["hypervisor"]["draining"] and [vm["name"] for vm in drained["remaining"]] == names
    done = cloud.cli("hyper", "remove", str(host), "--yes")
    assert done.returncode == 2 and f"hypervisor {host} still has {len(names)} VM" in done.stderr, described(done)

    # One command over live and gone VMs: the live ones through the tree, the gone ones at once.
    done = cloud.cli("vm", "delete", "--name", "web-*", "--yes")
    assert done.returncode == 0 and done.stdout.startswith(f"{len(vms)} deleted in "), described(done)
    assert cloud.instances() == []
    jobs = [j for j in cloud.get("/jobs", limit=50)["items"] if j["action"] == "delete"]
    notes = Counter(j["reason"] for j in jobs if j["state"] == "succeeded")
    assert sum(notes.values()) == len(vms)
    assert all(notes[f"hypervisor {h} is gone (the tree no longer has it): nothing was sent and nothing was left "
                     f"to clean there"] == sum(1 for v in lost if v["hypervisor_id"] == h) for h in (2, 3)), notes
    assert {j["attempts"] for j in jobs if j["hypervisor_id"] >= 2} == {0}
    assert {j["attempts"] for j in jobs if j["hypervisor_id"] < 2} == {1}
    assert all(found == [] for found in cloud.domains().values())
    wait_for(lambda: all(h["vcpus_claimed"] == 0 for h in cloud.hypervisors()), 10, "every claim released")

    done = cloud.cli("hyper", "remove", str(host))  # stdin is not a terminal to ask on
    assert done.returncode == 2 and "pass --yes" in done.stderr, described(done)
    done = cloud.cli("hyper", "remove", str(host), "--yes")
    assert done.returncode == 0 and done.stdout.strip() == f"hypervisor {host} (sim-{host:05d}) removed", \
        described(done)
    listed = cloud.cli("hyper", "list").stdout
    assert f"sim-{host:05d}" not in listed and "gone" in listed
    assert f"sim-{host:05d}" in cloud.cli("hyper", "list", "--all").stdout
    # Placements go to the live hosts only, and the removed one stays removed.
    batch = cloud.post("/instances", {"name": "db", "flavor": "small", "image": "tiny", "count": 4})["batch"]
    assert cloud.wait_batch(batch, 4)["succeeded"] == 4
    assert {v["hypervisor_id"] for v in cloud.instances(name="db-*")} <= {0, 1}
    assert cloud.get(f"/hypervisors/{host}")["state"] == "removed"
