"""REST API -> dispatcher -> gRPC -> tree -> agent -> libvirt test driver, and back: no mocks.

Each test checks what libvirt really holds (``vm.list`` through the tree), not only what
the API's database says. The tests that need only two hypervisors, flavor ``small`` and image
``tiny`` share one such cloud (``two_hypervisors``: starting a tree and an API is most of their
time); each makes VMs and images of its own names and judges only those.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import func, select

from cloudland import operations
from cloudland_api.db import make_engine
from cloudland_api.models import Job, JobState
from cloudland_launcher.harness import wait_for
from cloudland_proto.v1 import envelope_pb2 as pb
from tests.integration.cloud import Cloud, bootstrapped

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_hypervisors(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    """Two hypervisors and the API on them, bootstrapped, for the module (cloud.bootstrapped)."""
    with bootstrapped(tmp_path_factory.mktemp("control-plane"), 2) as cloud:
        yield cloud


def job_states(database_url: str, batch: str) -> Counter[str]:
    """The batch's jobs per state, read from the database itself (the API is dead)."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(Job.state, func.count()).where(Job.batch == batch).group_by(Job.state))
            return Counter({JobState(state).value: n for state, n in rows})
    finally:
        engine.dispose()


def running_names(cloud: Cloud) -> dict[str, int]:
    """Domain name -> how many hypervisors hold a running domain of that name."""
    names: Counter[str] = Counter()
    for vms in cloud.domains().values():
        names.update(vm["name"] for vm in vms if vm["state"] == "running")
    return dict(names)


def test_twenty_vms_created_listed_stopped_deleted(make_cloud: Any) -> None:
    cloud: Cloud = make_cloud(8, per_leaf=2)
    cloud.bootstrap()
    cloud.wait_hypervisors(8)

    accepted = cloud.post("/instances", {"name": "web", "flavor": "small", "image": "tiny", "count": 20})
    assert [i["name"] for i in accepted["instances"]] == [f"web-{n}" for n in range(1, 21)]
    assert cloud.wait_batch(accepted["batch"], 20)["succeeded"] == 20

    vms = cloud.instances(name="web-*")
    assert len(vms) == 20 and {v["status"] for v in vms} == {"running"}
    domains = {f"cl-{v['uuid']}": v["hypervisor_id"] for v in vms}
    held = {vm["name"]: hv for hv, found in cloud.domains().items() for vm in found}
    assert held == domains, "libvirt must hold exactly the 20 domains, each on the hypervisor the API names"
    assert len(set(domains.values())) > 1, "spread places a burst on more than one hypervisor"

    stop = cloud.post("/instances/actions", {"action": "stop", "ids": [v["id"] for v in vms]})
    assert cloud.wait_batch(stop["batch"], 20)["succeeded"] == 20
    assert {v["status"] for v in cloud.instances(name="web-*")} == {"stopped"}
    assert running_names(cloud) == {}

    delete = cloud.post("/instances/actions", {"action": "delete", "ids": [v["id"] for v in vms]})
    assert cloud.wait_batch(delete["batch"], 20)["succeeded"] == 20
    assert cloud.instances() == []
    assert len(cloud.instances(status="deleted")) == 20
    assert all(found == [] for found in cloud.domains().values())
    wait_for(lambda: all(h["vcpus_claimed"] == 0 for h in cloud.hypervisors()), 10, "claims released")


def test_single_vm_actions_follow_libvirt(two_hypervisors: Cloud) -> None:
    cloud = two_hypervisors
    cloud.post("/flavors", {"name": "big", "vcpus": 2, "memory_mib": 256, "disk_gib": 1})
    [vm] = cloud.post("/instances", {"name": "db", "flavor": "small", "image": "tiny"})["instances"]

    def job(path: str, body: Any = None) -> dict[str, Any]:
        started = cloud.post(path, body)
        ended: dict[str, Any] = cloud.get(f"/jobs/{started['id']}", wait=30)
        return ended

    wait_for(lambda: cloud.get(f"/instances/{vm['id']}")["status"] == "running", 30, "db running")
    assert job(f"/instances/{vm['id']}/stop")["state"] == "succeeded"
    resized = job(f"/instances/{vm['id']}/resize", {"flavor": "big"})
    assert resized["state"] == "succeeded", resized
    shown = cloud.get(f"/instances/{vm['id']}")
    assert (shown["vcpus"], shown["memory_mib"], shown["status"]) == (2, 256, "stopped")
    [record] = [d for found in cloud.domains().values() for d in found if d["name"] == f"cl-{vm['uuid']}"]
    assert (record["vcpus"], record["memory_mib"], record["state"]) == (2, 256, "shutoff")
    assert job(f"/instances/{vm['id']}/start")["state"] == "succeeded"
    assert job(f"/instances/{vm['id']}/reboot")["state"] == "succeeded"
    assert running_names(cloud)[f"cl-{vm['uuid']}"] == 1  # running, on one hypervisor only
    busy = cloud.http.post(f"/instances/{vm['id']}/resize", json={"flavor": "small"})  # type: ignore[union-attr]
    assert busy.status_code == 409 and "running" in busy.json()["error"]["message"]


def test_claims_never_overbook(database_url: str, make_cloud: Any) -> None:
    """200 concurrent creates, room for exactly 150: 150 run, 50 fail "no capacity", no host over.

    On SQLite and on PostgreSQL (``database_url``, requested first so it outlives the API).
    """
    cloud: Cloud = make_cloud(4, database_url=database_url)
    cloud.bootstrap(vcpus=1, memory_mib=64)
    # Simulated hosts 0..3 have 16, 32, 48 and 64 CPUs: ratios give 40 + 40 + 36 + 34 = 150 vCPUs.
    capacity = {0: 40, 1: 40, 2: 36, 3: 34}
    ratios = {0: 2.5, 1: 1.25, 2: 0.75, 3: 0.53125}
    for host in cloud.wait_hypervisors(4):
        updated = cloud.patch(f"/hypervisors/{host['id']}", {"cpu_ratio": ratios[host["id"]]})
        assert updated["vcpus_capacity"] == capacity[host["id"]]

    def create(n: int) -> str:
        batch: str = cloud.post("/instances", {"name": f"vm-{n}", "flavor": "small", "image": "tiny"})["batch"]
        return batch

    with ThreadPoolExecutor(50) as pool:
        batches = list(pool.map(create, range(200)))
    states = Counter(state for b in batches for state, n in cloud.wait_batch(b, 1).items() if n)
    assert states == {"succeeded": 150, "failed": 50}, states
    failed = [j for b in batches for j in cloud.jobs(b, "failed")]
    assert len(failed) == 50 and all("no capacity" in j["reason"] for j in failed), failed[:3]

    running = cloud.instances(status="running")
    assert len(running) == 150
    per_host = Counter(v["hypervisor_id"] for v in running)
    assert all(per_host[h] <= capacity[h] for h in capacity), per_host
    held = {hv: len(found) for hv, found in cloud.domains().items()}
    assert sum(held.values()) == 150 and all(held[h] <= capacity[h] for h in capacity), held
    assert {h["id"]: h["vcpus_claimed"] for h in cloud.hypervisors()} == dict(per_host)
    assert len(cloud.instances(status="error")) == 50


def test_api_killed_mid_batch_loses_nothing_and_duplicates_nothing(make_cloud: Any) -> None:
    # Two senders: the batch takes long enough to be cut in the middle.
    cloud: Cloud = make_cloud(4, dispatch_workers=2)
    cloud.bootstrap()
    cloud.wait_hypervisors(4)
    batch = cloud.post("/instances", {"name": "r", "flavor": "small", "image": "tiny", "count": 100})["batch"]
    wait_for(lambda: cloud.counts(batch)["succeeded"] >= 5, 60, "the first creates", every=0.005)
    cloud.kill_api()
    at_kill = job_states(cloud.database_url, batch)
    assert at_kill["succeeded"] < 100, f"the kill came too late to test anything: {at_kill}"

    started = time.monotonic()
    cloud.start_api()
    assert cloud.wait_batch(batch, 100)["succeeded"] == 100
    assert "jobs_recovered" in cloud.log()

    names = Counter(vm["name"] for found in cloud.domains().values() for vm in found)
    assert len(names) == 100 and set(names.values()) == {1}, "no domain may exist twice"
    vms = cloud.instances(name="r-*")
    assert len(vms) == 100 and {v["status"] for v in vms} == {"running"}
    assert {f"cl-{v['uuid']}" for v in vms} == set(names)
    print(f"restart: jobs at the kill {dict(at_kill)}; all 100 ended {time.monotonic() - started:.1f} s after it")


def test_reconciler_takes_observed_state_from_the_reports(two_hypervisors: Cloud) -> None:
    """A VM stopped behind the API's back shows stopped; one whose domain vanished is defined and
    started again on its own hypervisor by a ``recover`` job the reconciler made."""
    cloud = two_hypervisors
    accepted = cloud.post("/instances", {"name": "oob", "flavor": "small", "image": "tiny", "count": 2})
    assert cloud.wait_batch(accepted["batch"], 2)["succeeded"] == 2
    stopped, vanished = sorted(cloud.instances(name="oob-*"), key=lambda v: v["name"])
    for instance, operation in ((stopped, "vm.stop"), (vanished, "vm.delete")):
        args = {"name": f"cl-{instance['uuid']}"} | ({"force": True} if operation == "vm.stop" else {})
        request = operations.parse(operation, args)
        [reply] = cloud.tree.client.run(operation, instance["hypervisor_id"], request=request, timeout=30)
        assert reply.status == pb.OK, reply.error

    def observed() -> bool:
        now = {v["name"]: v for v in cloud.instances(name="oob-*")}
        back = {vm["name"]: vm["state"] for vm in cloud.domains().get(vanished["hypervisor_id"], [])}
        return now["oob-1"]["status"] == "stopped" and back.get(f"cl-{vanished['uuid']}") == "running"

    # Instances touched in the last 10 s (sync.SETTLE_S) are left alone; then the reports win.
    wait_for(observed, 40, "the reconciler to see the stopped VM and to bring the vanished one back", every=0.5)
    [recover] = [j for j in cloud.get("/jobs", limit=100)["items"]
                 if j["action"] == "recover" and j["instance_id"] in (stopped["id"], vanished["id"])]
    assert (recover["instance_id"], recover["state"]) == (vanished["id"], "succeeded")
    assert recover["batch"].startswith("reconcile-")
    assert cloud.get(f"/instances/{vanished['id']}")["status"] == "running"
    # Desired state stays the database's: the stopped VM starts again through the API.
    started = cloud.post(f"/instances/{stopped['id']}/start")
    assert cloud.get(f"/jobs/{started['id']}", wait=30)["state"] == "succeeded"
    assert cloud.get(f"/instances/{stopped['id']}")["status"] == "running"


def test_console_reaches_the_agent_through_the_tree(two_hypervisors: Cloud) -> None:
    """The WebSocket asks the VM's own hypervisor; a test-driver domain has no serial log, and says so.
    Nor has it a VNC display: the API asks the hypervisor, and says that too (409, naming both)."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    cloud = two_hypervisors
    [vm] = cloud.post("/instances", {"name": "tty", "flavor": "small", "image": "tiny"})["instances"]
    wait_for(lambda: cloud.get(f"/instances/{vm['id']}")["status"] == "running", 30, "tty running")
    vm = cloud.get(f"/instances/{vm['id']}")
    assert cloud.http is not None
    url = f"ws://127.0.0.1:{cloud.port}/api/v1/instances/{vm['id']}/console"
    with connect(url, additional_headers={"Authorization": cloud.http.headers["Authorization"]}) as ws:
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=30)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1011
    assert info.value.rcvd.reason == (f"vm.console: VM 'cl-{vm['uuid']}' has no serial console log "
                                      f"(hypervisor {vm['hypervisor_id']})")
    # The CLI says the same in one line and exits 1 (the hypervisor refused).
    done = cloud.cli("vm", "console", "tty", "--read-only")
    assert done.returncode == 1, done
    assert done.stderr.strip().splitlines()[-1] == (f"cloudland: vm.console: VM 'cl-{vm['uuid']}' has no serial "
                                                    f"console log (hypervisor {vm['hypervisor_id']})")

    no_vnc = (f"instance {vm['id']} (tty) on hypervisor {vm['hypervisor_id']} has no graphical console: "
              f"hypervisor {vm['hypervisor_id']} is simulated (libvirt test:///), and its guests have no VNC display")
    reply = cloud.http.get(f"/instances/{vm['id']}/vnc")
    assert (reply.status_code, reply.json()) == (409, {"error": {"code": "conflict", "message": no_vnc}})
    done = cloud.cli("vm", "vnc", "tty")
    assert (done.returncode, done.stdout, done.stderr.strip()) == (2, "", f"cloudland: {no_vnc}")


def test_capture_on_a_simulated_hypervisor_fails_and_says_why(two_hypervisors: Cloud) -> None:
    """The capture job goes through the tree to the VM's hypervisor, whose test-driver domain
    has no disk: the job fails naming it, the image ends ``error``, the VM stays stopped.
    (tests/realvm/test_capture_real.py captures a real guest's disk through the same path.)"""
    cloud = two_hypervisors
    [vm] = cloud.post("/instances", {"name": "src", "flavor": "small", "image": "tiny"})["instances"]
    wait_for(lambda: cloud.get(f"/instances/{vm['id']}")["status"] == "running", 30, "src running")
    done = cloud.cli("vm", "capture", "src", "golden")
    assert done.returncode == 2 and "is running: cannot capture it; stop it first" in done.stderr, done
    assert cloud.cli("vm", "stop", "src", "--force").returncode == 0
    done = cloud.cli("vm", "capture", "src", "golden")
    vm = cloud.get(f"/instances/{vm['id']}")
    reason = (f"hypervisor {vm['hypervisor_id']}: vm.capture: VM 'cl-{vm['uuid']}' has no disk to capture (a "
              f"simulated hypervisor keeps no guest disks) (hypervisor {vm['hypervisor_id']}, job ")
    assert done.returncode == 1 and reason in " ".join(done.stdout.split()), done
    [image] = [i for i in cloud.get("/images")["items"] if i["name"] == "golden"]
    assert image["status"] == "error"
    assert (vm["status"], vm["job_id"]) == ("stopped", None)
    assert vm["status_reason"].startswith(f"capture failed: {reason}")


def test_deleting_an_image_asks_every_hypervisor_to_evict_it(two_hypervisors: Cloud) -> None:
    """After the 204, ``image.evict`` goes to every hypervisor through the tree; every one answers
    (simulated hypervisors cache nothing, so each has nothing to remove)."""
    cloud = two_hypervisors
    assert cloud.http is not None
    image = cloud.post("/images", {"name": "evicted", "disk_format": "raw"})
    reply = cloud.http.put(f"/images/{image['id']}/file", content=b"\1" * 4096,
                           headers={"Content-Type": "application/octet-stream"})
    assert reply.status_code == 200, reply.text
    image = reply.json()
    assert cloud.http.delete(f"/images/{image['id']}").status_code == 204
    line = f"event=image_evicted image_id={image['id']} sha256={image['sha256']} evicted=2 in_use=0 failed=0"
    wait_for(lambda: line in cloud.log(), 30, "the eviction to be logged")
