"""A VM from an image onto a new volume in one create (issue 13's last slice), on SQLite and on
PostgreSQL: ``POST /instances`` with ``new_boot_volume``. The checks (4xx naming the field), the
quotas charged with the instances under concurrency, the rows it writes, what the engine sends
(``BootVolume.create``) and how the create's outcome and the VM's delete settle the volume.
There is no tree here: ``settle`` ends jobs as the engine's writer would; the engine tests use
the recording fake root (tests/fakeroot.py)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select

from cloudland_api.jobs import Engine, Settings
from cloudland_api.jobs.guest import GuestSource
from cloudland_api.models import INSTANCE, Hypervisor, Image, Instance, Job, JobState, Volume, VolumeAttachment
from cloudland_api.services.boot_volumes import GIB
from tests.api.conftest import Api, add_hypervisor, settle
from tests.api.test_job_engine import job as job_row
from tests.api.test_quotas import burst, default_project, quota, set_project_quota
from tests.api.test_volume_jobs import Sessions
from tests.api.test_volumes import error, get, post
from tests.fakeroot import FakeRoot

API = "/api/v1"


def qcow2_header(virtual_bytes: int) -> bytes:
    """The first bytes of a qcow2 image of ``virtual_bytes``: what the API reads the size from."""
    return (b"QFI\xfb" + (3).to_bytes(4, "big") + bytes(16) + virtual_bytes.to_bytes(8, "big")).ljust(512, b"\0")


def qcow2_image(api: Api, headers: dict[str, str], name: str, virtual_bytes: int) -> dict[str, Any]:
    reply = api.client.post(f"{API}/images", json={"name": name, "disk_format": "qcow2"}, headers=headers)
    assert reply.status_code == 201, reply.text
    reply = api.client.put(f"{API}/images/{reply.json()['id']}/file", content=qcow2_header(virtual_bytes),
                           headers=headers | {"Content-Type": "application/octet-stream"})
    assert reply.status_code == 200, reply.text
    image: dict[str, Any] = reply.json()
    return image


def create(name: str, size_gib: int = 3, image: str = "disk", **extra: Any) -> dict[str, Any]:
    return {"name": name, "flavor": "small", "image": image, "new_boot_volume": {"size_gib": size_gib}} | extra


def volume_named(api: Api, headers: dict[str, str], name: str) -> dict[str, Any]:
    listed = api.client.get(f"{API}/volumes?limit=500", headers=headers).json()["items"]
    return next(v for v in listed if v["name"] == name)


def test_bad_requests_are_4xx_naming_what_is_wrong(api: Api, admin_headers: dict[str, str], make_flavor: Any) -> None:
    make_flavor("small")
    qcow2_image(api, admin_headers, "disk", 2 * GIB + 1)  # needs 3 GiB
    small = post(api, admin_headers, "instances", create("a", size_gib=2), 400)
    assert "new_boot_volume.size_gib 2 is below image 'disk'" in error(small) and "at least 3" in error(small)
    assert "not a volume type" in error(post(api, admin_headers, "instances",
                                             create("a", new_boot_volume={"size_gib": 3, "type": "gold"}), 400))
    # With an existing boot volume instead of an image, or a zero size: refused by the schema.
    post(api, admin_headers, "instances", {"name": "a", "flavor": "small", "boot_volume": 1,
                                           "new_boot_volume": {"size_gib": 3}}, 422)
    post(api, admin_headers, "instances", create("a", size_gib=0), 422)
    post(api, admin_headers, "instances", {"name": "a", "flavor": "small", "image": "disk",
                                           "delete_on_termination": True}, 422)
    too_long = post(api, admin_headers, "instances", create("n" * 60), 400)
    assert "longer than 64" in error(too_long)
    # A volume already holds the name the new one would take: 409, and nothing is written.
    add_hypervisor(api, 7)
    post(api, admin_headers, "volumes", {"name": "web-boot", "size_gib": 1})
    assert "volume name 'web-boot' is already used" in error(post(api, admin_headers, "instances", create("web"), 409))
    assert api.client.get(f"{API}/instances", headers=admin_headers).json()["items"] == []
    assert quota(api, admin_headers)["volumes"]["used"] == 1


def test_count_makes_one_volume_per_vm_made_by_its_create_job(api: Api, admin_headers: dict[str, str],
                                                              make_flavor: Any) -> None:
    make_flavor("small")
    image = qcow2_image(api, admin_headers, "disk", GIB)
    accepted = post(api, admin_headers, "instances", create("web", size_gib=4, count=3,
                                                            delete_on_termination=True))
    vms, jobs = accepted["instances"], accepted["jobs"]
    assert [vm["name"] for vm in vms] == ["web-1", "web-2", "web-3"]
    volumes = [volume_named(api, admin_headers, f"{vm['name']}-boot") for vm in vms]
    assert [vm["boot_volume_id"] for vm in vms] == [v["id"] for v in volumes]  # the create's answer shows them
    for vm, job, made in zip(vms, jobs, volumes):
        assert (vm["image_id"], vm["disk_gib"]) == (image["id"], 4)
        assert (made["status"], made["size_gib"], made["type"], made["source_image_id"], made["job_id"]) == (
            "creating", 4, "local", image["id"], job["id"])
        attachment = made["attachment"]
        assert (attachment["instance_id"], attachment["device"], attachment["delete_on_termination"]) == (
            vm["id"], "vda", True)
    # The volume is busy with its VM's create: nothing else acts on it meanwhile.
    busy = api.client.delete(f"{API}/volumes/{volumes[0]['id']}", headers=admin_headers)
    assert busy.status_code == 409, busy.text
    lines = quota(api, admin_headers)
    assert (lines["volumes"]["used"], lines["volume_gib"]["used"], lines["instances"]["used"]) == (3, 12, 3)
    settle(api, jobs[0]["id"])
    made = get(api, admin_headers, volumes[0]["id"])
    assert (made["status"], made["job_id"], made["attachment"]["status"]) == ("available", None, "attached")
    listed = {vm["name"]: vm["boot_volume_id"] for vm in
              api.client.get(f"{API}/instances", headers=admin_headers).json()["items"]}
    assert listed == {vm["name"]: v["id"] for vm, v in zip(vms, volumes)}


def test_quotas_refuse_a_create_whole_under_concurrency(api: Api, admin_headers: dict[str, str],
                                                        make_flavor: Any) -> None:
    """Room for 10 GiB of volumes: of 12 concurrent creates of 2 VMs with 2 GiB each (4 GiB a
    create), exactly 2 fit; the others are refused whole (no instance, no volume)."""
    make_flavor("small")
    qcow2_image(api, admin_headers, "disk", GIB)
    set_project_quota(api, admin_headers, default_project(api, admin_headers), volume_gib=10)
    replies = burst(api, admin_headers, [create(f"vm{i}", size_gib=2, count=2) for i in range(12)])
    statuses = sorted(r.status_code for r in replies)
    assert statuses.count(202) == 2 and statuses.count(409) == 10, statuses
    for reply in replies:
        if reply.status_code == 409:
            assert reply.json()["error"]["code"] == "quota_exceeded", reply.text
            assert "quota volume_gib of project 'default' exceeded: limit 10" in error(reply.json())
    lines = quota(api, admin_headers)
    assert (lines["volumes"]["used"], lines["volume_gib"]["used"], lines["instances"]["used"]) == (4, 8, 4)
    with api.app.state.write_sessions() as session:
        assert session.scalar(select(func.count(Volume.id))) == 4
        assert session.scalar(select(func.count(Instance.id))) == 4
    # The volumes quota too: 1 more volume allowed, a create of 2 VMs is refused whole.
    set_project_quota(api, admin_headers, default_project(api, admin_headers), volume_gib=None, volumes=5)
    refused = post(api, admin_headers, "instances", create("two", size_gib=1, count=2), 409)
    assert "quota volumes of project 'default' exceeded: limit 5, 4 used, 2 more asked" in error(refused)
    post(api, admin_headers, "instances", create("one", size_gib=1))


def test_the_vms_delete_deletes_its_volume_when_asked_else_leaves_it_available(
        api: Api, admin_headers: dict[str, str], make_flavor: Any) -> None:
    make_flavor("small")
    qcow2_image(api, admin_headers, "disk", GIB)
    outcomes = {}
    for name, delete_too in (("gone", True), ("kept", False)):
        accepted = post(api, admin_headers, "instances", create(name, delete_on_termination=delete_too))
        [vm], [job] = accepted["instances"], accepted["jobs"]
        add_hypervisor(api, 7) if name == "gone" else None
        with api.app.state.write_sessions() as session:
            session.get(Instance, vm["id"]).hypervisor_id = 7  # type: ignore[union-attr]
            session.commit()
        settle(api, job["id"])
        reply = api.client.delete(f"{API}/instances/{vm['id']}", headers=admin_headers)
        assert reply.status_code == 202, reply.text
        settle(api, reply.json()["id"])
        outcomes[name] = get(api, admin_headers, vm["boot_volume_id"])
    gone, kept = outcomes["gone"], outcomes["kept"]
    assert (gone["status"], gone["attachment"]) == ("deleting", None)
    with api.app.state.write_sessions() as session:
        job = session.get(Job, gone["job_id"])
        assert job is not None and (job.kind, job.action, job.subject_id) == ("volume", "delete", gone["id"])
    assert (kept["status"], kept["attachment"], kept["job_id"]) == ("available", None, None)
    # The kept volume boots a new VM.
    again = post(api, admin_headers, "instances", {"name": "again", "flavor": "small", "boot_volume": kept["id"]})
    assert again["instances"][0]["boot_volume_id"] == kept["id"]


def test_a_failed_create_leaves_the_volume_in_error_and_the_vms_delete_takes_it(
        api: Api, admin_headers: dict[str, str], make_flavor: Any) -> None:
    """Even when the create did not ask for it: the volume never held the tenant's data."""
    make_flavor("small")
    qcow2_image(api, admin_headers, "disk", GIB)
    accepted = post(api, admin_headers, "instances", create("bad"))
    [vm], [job] = accepted["instances"], accepted["jobs"]
    add_hypervisor(api, 7)
    with api.app.state.write_sessions() as session:
        session.get(Instance, vm["id"]).hypervisor_id = 7  # type: ignore[union-attr]
        session.commit()
    settle(api, job["id"], "failed", "image 3 needs 5368709120 bytes: volume 1 of 3221225472 is too small")
    made = get(api, admin_headers, vm["boot_volume_id"])
    assert made["status"] == "error" and made["job_id"] is None
    assert f"made for instance {vm['id']}, whose create failed: image 3 needs" in made["status_reason"]
    assert made["attachment"]["delete_on_termination"] is True
    instance = api.client.get(f"{API}/instances/{vm['id']}", headers=admin_headers).json()
    assert instance["status"] == "error"
    reply = api.client.delete(f"{API}/instances/{vm['id']}", headers=admin_headers)
    settle(api, reply.json()["id"])
    going = get(api, admin_headers, made["id"])
    assert (going["status"], going["attachment"]) == ("deleting", None)
    settle(api, going["job_id"])
    assert api.client.get(f"{API}/volumes/{made['id']}", headers=admin_headers).status_code == 404
    assert quota(api, admin_headers)["volume_gib"]["used"] == 0


# -- what the engine sends ----------------------------------------------------------------------


def new_boot(sessions: Sessions, org: int, backend: str) -> tuple[str, int, int]:
    """A create job of a VM whose boot volume (``backend``) it makes from an image: (job, instance, volume)."""
    with sessions() as session:
        image = Image(org_id=org, name=f"img-{backend}", disk_format="qcow2", status="active", sha256="ab" * 32,
                      size_bytes=512)
        instance = Instance(org_id=org, name=f"vm-{backend}", uuid=str(uuid.uuid4()), vcpus=1, memory_mib=512,
                            disk_gib=3, status="building")
        session.add_all([image, instance])
        session.flush()
        job = Job(id=f"job-{backend}", org_id=org, batch="b", kind="vm", action="create", subject_type=INSTANCE,
                  subject_id=instance.id, args={}, state=JobState.pending, attempts=0)
        volume = Volume(org_id=org, name=f"vm-{backend}-boot", size_gib=3, type=backend, backend=backend,
                        status="creating", source_image_id=image.id, job_id=job.id)
        session.add_all([job, volume])
        session.flush()
        session.add(VolumeAttachment(org_id=org, volume_id=volume.id, instance_id=instance.id, device="vda",
                                     status="attaching"))
        instance.job_id = job.id
        session.commit()
        return job.id, instance.id, volume.id


def test_the_create_job_carries_the_new_volume_and_a_local_one_lives_where_the_vm_is(
        sessions: Sessions, org: int) -> None:
    fake = FakeRoot(hypervisors=(1, 2))
    with sessions() as session:
        session.add_all(Hypervisor(id=hv, hostname=f"hv{hv}", cpus=8, memory_mib=8192, free_memory_mib=8192)
                        for hv in (1, 2))
        session.commit()
    # Without an image URL for hypervisors the create fails at once, saying so, and sends nothing.
    failed, _, failed_volume = new_boot(sessions, org, "local")
    Engine(sessions, fake, backoff=lambda tries: 0.0).run_once([failed])
    assert fake.commands == [] and "no image URL" in (job_row(sessions, failed).reason or "")
    with sessions() as session:
        volume = session.get(Volume, failed_volume)
        assert volume is not None and volume.status == "error" and "no image URL" in (volume.status_reason or "")
    source = GuestSource("http://api.example:8080/api/v1/images", b"k" * 32, 3600)
    engine = Engine(sessions, fake, Settings(guest_source=source), backoff=lambda tries: 0.0)
    for backend in ("ceph", "local2"):
        job_id, instance_id, volume_id = new_boot(sessions, org, backend)
        with sessions() as session:  # "local2" stands for a second local type: make it local
            if backend == "local2":
                session.get(Volume, volume_id).backend = "local"  # type: ignore[union-attr]
                session.commit()
        engine.run_once([job_id])
        sent = fake.commands[-1]
        boot = sent.request.boot_volume
        assert sent.operation == "vm.create" and boot.volume.id == volume_id and boot.HasField("create")
        assert boot.create.size_bytes == 3 * GIB and boot.create.image.token
        assert boot.create.image.url.endswith("/download") and boot.create.image.sha256 == "ab" * 32
        assert job_row(sessions, job_id).state == JobState.succeeded
        with sessions() as session:
            instance = session.get(Instance, instance_id)
            volume = session.get(Volume, volume_id)
            assert instance is not None and volume is not None and instance.hypervisor_id == sent.targets
            assert (volume.status, volume.job_id) == ("available", None)
            # A local volume is where its VM was placed; a shared one on none.
            assert volume.hypervisor_id == (sent.targets if backend == "local2" else None)
