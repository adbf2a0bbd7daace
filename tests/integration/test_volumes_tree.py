"""Volumes end to end on simulated hypervisors (issue 13): REST API -> job engine -> gRPC -> tree ->
agent -> qemu-img and libvirt's test driver, and back through the hypervisors' reports.

A ``local`` volume is a real qcow2 file in the agent's state directory; its attachment is a disk
of the domain's definition, which the agent reports (VmState.disks) with its volume and
attachment ids, so the test checks what the hypervisor holds, not only what the database says.
The first two tests run on one cloud of 2 hypervisors (``two_hypervisors``), with volumes and VMs
of their own names.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from cloudland_launcher.harness import wait_for
from tests.integration.cloud import Cloud, bootstrapped

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_hypervisors(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    """Two hypervisors and the API on them, bootstrapped, for the module (cloud.bootstrapped)."""
    with bootstrapped(tmp_path_factory.mktemp("volumes-tree"), 2) as cloud:
        yield cloud


def ended(cloud: Cloud, accepted: dict[str, Any]) -> dict[str, Any]:
    job: dict[str, Any] = cloud.get(f"/jobs/{accepted['job']['id']}", wait=30)
    assert job["state"] == "succeeded", job
    return job


def disks(cloud: Cloud, hypervisor: int, domain: str) -> list[tuple[str, int, int]]:
    """(device, volume id, attachment id) of each disk the hypervisor reports for ``domain``."""
    report = next(r for r in cloud.tree.client.health(reports=True).reports if r.hypervisor == hypervisor)
    return [(d.device, d.volume_id, d.attachment_id) for vm in report.vms if vm.name == domain for d in vm.disks]


def test_a_local_volume_is_made_attached_grown_snapshotted_cloned_detached_and_deleted(
        two_hypervisors: Cloud) -> None:
    cloud = two_hypervisors
    [vm] = cloud.post("/instances", {"name": "db", "flavor": "small", "image": "tiny"})["instances"]
    wait_for(lambda: cloud.get(f"/instances/{vm['id']}")["status"] == "running", 30, "db running")
    vm = cloud.get(f"/instances/{vm['id']}")
    hv, domain = vm["hypervisor_id"], f"cl-{vm['uuid']}"

    made = cloud.post("/volumes", {"name": "data", "size_gib": 1, "instance": vm["id"]})
    ended(cloud, made)
    volume = cloud.get(f"/volumes/{made['volume']['id']}")
    assert (volume["status"], volume["hypervisor_id"]) == ("available", hv)
    files = list(cloud.tree.state_dir.rglob(f"volumes/hv{hv}/vol-{volume['id']}.qcow2"))
    assert len(files) == 1 and files[0].stat().st_mode & 0o777 == 0o600, files

    attached = cloud.post(f"/volumes/{volume['id']}/attachments", {"instance": vm["id"]})
    ended(cloud, attached)
    attachment = attached["volume"]["attachment"]
    wait_for(lambda: ("vdb", volume["id"], attachment["id"]) in disks(cloud, hv, domain), 10,
             "the hypervisor to report the attached disk")

    ended(cloud, cloud.post(f"/volumes/{volume['id']}/extend", {"size_gib": 2}))
    assert cloud.get(f"/volumes/{volume['id']}")["size_gib"] == 2

    gone = cloud.request("DELETE", f"/volumes/{volume['id']}/attachments/{attachment['id']}")
    ended(cloud, gone)
    assert cloud.request("DELETE", f"/volumes/{volume['id']}/attachments/{attachment['id']}")["job"] is None
    wait_for(lambda: all(d[2] != attachment["id"] for d in disks(cloud, hv, domain)), 10, "the disk reported gone")

    snap = cloud.post(f"/volumes/{volume['id']}/snapshots", {"name": "s1"})
    ended(cloud, snap)
    clone = cloud.post("/volumes", {"name": "copy", "snapshot": "s1"})
    job = ended(cloud, clone)
    assert job["targets"] == {"hypervisor": hv}
    assert cloud.get(f"/volumes/{clone['volume']['id']}")["size_gib"] == 2

    # From an image: the hypervisor fetches it from the API into its cache, and converts it.
    imaged = cloud.post("/volumes", {"name": "from-image", "size_gib": 1, "image": "tiny", "instance": vm["id"]})
    ended(cloud, imaged)
    made_file = next(cloud.tree.state_dir.rglob(f"volumes/hv{hv}/vol-{imaged['volume']['id']}.qcow2"))
    info = subprocess.run(["qemu-img", "info", "--output=json", str(made_file)], capture_output=True, text=True,
                          check=True).stdout
    assert json.loads(info)["virtual-size"] == 1 << 30
    assert list(cloud.tree.state_dir.rglob("image-cache/*.raw")), "the image came through the cache"

    snapshot_id = snap["snapshot"]["id"]
    ended(cloud, cloud.request("DELETE", f"/volumes/{volume['id']}/snapshots/{snapshot_id}"))
    ended(cloud, cloud.request("DELETE", f"/volumes/{volume['id']}"))
    assert not files[0].exists()

    # The same through the CLI: every change waits for its job; a second detach has nothing to do.
    def cli(*args: str) -> str:
        done = cloud.cli("volume", *args)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    assert "succeeded" in cli("create", "logs", "--size", "1", "--vm", "db", "--image", "tiny")
    assert "succeeded" in cli("attach", "logs", "--vm", "db")
    [listed] = [v for v in json.loads(cli("list", "--json"))["items"] if v["name"] == "logs"]
    assert listed["attachment"]["device"] == "vdb" and listed["attachment"]["status"] == "attached"
    refused = cloud.cli("volume", "delete", "logs")
    assert refused.returncode != 0 and "detach it first" in refused.stdout + refused.stderr
    assert "succeeded" in cli("detach", "logs")
    assert "nothing to do" in cli("detach", "logs")
    assert "succeeded" in cli("delete", "logs")


def test_a_vm_boots_from_a_volume_that_outlives_it_unless_asked(two_hypervisors: Cloud) -> None:
    """Must-show 5 on simulated hypervisors: a VM whose root disk (vda) is a local volume runs on
    the volume's hypervisor; deleted, it leaves the volume (default), which boots the next VM; a
    VM made with delete_on_termination takes its volume with it. The refusals are 409s."""
    cloud = two_hypervisors
    made = cloud.post("/volumes", {"name": "root", "size_gib": 1, "image": "tiny"})
    ended(cloud, made)
    volume = cloud.get(f"/volumes/{made['volume']['id']}")
    home = volume["hypervisor_id"]
    [file] = cloud.tree.state_dir.rglob(f"volumes/hv{home}/vol-{volume['id']}.qcow2")

    def boot(name: str, **extra: Any) -> dict[str, Any]:
        [vm] = cloud.post("/instances", {"name": name, "flavor": "small", "boot_volume": "root"} | extra)["instances"]
        wait_for(lambda: cloud.get(f"/instances/{vm['id']}")["status"] in ("running", "error"), 30, f"{name} created")
        vm = cloud.get(f"/instances/{vm['id']}")
        assert (vm["status"], vm["hypervisor_id"], vm["image_id"]) == ("running", home, None), vm
        return vm

    first = boot("first")
    attachment = cloud.get(f"/volumes/{volume['id']}")["attachment"]
    assert (attachment["instance_id"], attachment["device"], attachment["status"],
            attachment["delete_on_termination"]) == (first["id"], "vda", "attached", False)
    # The domain's root disk is the volume's file, by its attachment (reported by the hypervisor).
    wait_for(lambda: ("vda", volume["id"], attachment["id"]) in disks(cloud, home, f"cl-{first['uuid']}"), 10,
             "the hypervisor to report the boot volume as vda")

    def refused(method: str, path: str, body: dict[str, Any] | None = None) -> str:
        assert cloud.http is not None
        reply = cloud.http.request(method, path, json=body)
        assert reply.status_code == 409, reply.text
        message: str = reply.json()["error"]["message"]
        return message

    assert "boots only from a detached volume" in refused("POST", "/instances", {"name": "second", "flavor": "small",
                                                                                  "boot_volume": "root"})
    assert "it cannot be detached" in refused("DELETE", f"/volumes/{volume['id']}/attachments/{attachment['id']}")
    assert "detach it first" in refused("DELETE", f"/volumes/{volume['id']}")
    assert "snapshot its volume instead" in refused("POST", f"/instances/{first['id']}/capture", {"name": "img"})
    assert "cannot be rebuilt" in refused("POST", f"/instances/{first['id']}/rebuild", {"image": "tiny"})
    assert "cannot be resized" in refused("POST", f"/instances/{first['id']}/resize", {"flavor": "small"})

    ended(cloud, {"job": cloud.request("DELETE", f"/instances/{first['id']}")})
    kept = cloud.get(f"/volumes/{volume['id']}")
    assert (kept["status"], kept["attachment"]) == ("available", None) and file.exists()

    second = boot("second", delete_on_termination=True)
    assert cloud.get(f"/volumes/{volume['id']}")["attachment"]["delete_on_termination"] is True
    ended(cloud, {"job": cloud.request("DELETE", f"/instances/{second['id']}")})
    assert cloud.http is not None
    wait_for(lambda: cloud.http.get(f"/volumes/{volume['id']}").status_code == 404, 30,
             "the volume deleted with its instance")
    assert not file.exists()

    # The same through the CLI: a VM from a volume; neither or both of --image and --boot-volume is a usage error.
    assert cloud.cli("volume", "create", "root2", "--size", "1", "--image", "tiny").returncode == 0
    done = cloud.cli("vm", "create", "from-cli", "--flavor", "small", "--boot-volume", "root2",
                     "--delete-on-termination")
    assert done.returncode == 0, done.stdout + done.stderr
    [vm] = cloud.instances(name="from-cli")
    root2 = next(v for v in cloud.get("/volumes")["items"] if v["name"] == "root2")
    assert (vm["status"], vm["hypervisor_id"]) == ("running", root2["hypervisor_id"])
    assert (root2["attachment"]["device"], root2["attachment"]["delete_on_termination"]) == ("vda", True)
    for both_or_none in ([], ["--image", "tiny", "--boot-volume", "root2"]):
        usage = cloud.cli("vm", "create", "bad", "--flavor", "small", *both_or_none)
        assert usage.returncode == 2 and "exactly one of --image and --boot-volume" in usage.stderr, usage


def test_vms_from_an_image_onto_new_volumes_in_one_create(make_cloud: Any) -> None:
    """Issue 13's last slice on simulated hypervisors, through the CLI: ``vm create --image
    --boot-volume-size --count 2`` makes each VM's volume from the image in its create job (a
    qcow2 file on the VM's hypervisor, its root disk vda as the hypervisor reports); deleting a
    VM made with --delete-on-termination takes its volume (and file) with it, --keep-volume
    leaves the volume available."""
    cloud: Cloud = make_cloud(2)
    cloud.bootstrap()
    cloud.wait_hypervisors(2)
    done = cloud.cli("vm", "create", "web", "--flavor", "small", "--image", "tiny", "--boot-volume-size", "1",
                     "--count", "2", "--delete-on-termination")
    assert done.returncode == 0, done.stdout + done.stderr
    volumes = {v["name"]: v for v in cloud.get("/volumes")["items"]}
    files = {}
    for vm in cloud.instances(name="web-*"):
        volume = volumes[f"{vm['name']}-boot"]
        assert (vm["status"], vm["boot_volume_id"], vm["disk_gib"]) == ("running", volume["id"], 1), vm
        assert (volume["status"], volume["hypervisor_id"], volume["attachment"]["device"]) == (
            "available", vm["hypervisor_id"], "vda"), volume
        [files[vm["id"]]] = cloud.tree.state_dir.rglob(f"volumes/hv{vm['hypervisor_id']}/vol-{volume['id']}.qcow2")
        attachment = volume["attachment"]["id"]
        wait_for(lambda: ("vda", volume["id"], attachment) in disks(cloud, vm["hypervisor_id"], f"cl-{vm['uuid']}"),
                 10, "the hypervisor to report the new volume as vda")
    [gone, _] = cloud.instances(name="web-*")
    assert cloud.cli("vm", "delete", gone["name"]).returncode == 0
    assert cloud.http is not None
    wait_for(lambda: cloud.http.get(f"/volumes/{gone['boot_volume_id']}").status_code == 404, 30,
             "the new volume deleted with its VM")
    assert not files[gone["id"]].exists()

    kept = cloud.cli("vm", "create", "db", "--flavor", "small", "--image", "tiny", "--boot-volume-size", "1",
                     "--keep-volume")
    assert kept.returncode == 0, kept.stdout + kept.stderr
    [db] = cloud.instances(name="db")
    assert cloud.cli("vm", "delete", "db").returncode == 0
    wait_for(lambda: cloud.get(f"/volumes/{db['boot_volume_id']}")["attachment"] is None, 30, "db's volume detached")
    assert cloud.get(f"/volumes/{db['boot_volume_id']}")["status"] == "available"
    usage = cloud.cli("vm", "create", "bad", "--flavor", "small", "--boot-volume", "x", "--boot-volume-size", "1")
    assert usage.returncode == 2 and "make a new volume from --image" in usage.stderr, usage
