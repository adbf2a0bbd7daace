"""Volumes through the real app (issue 13), on SQLite and on PostgreSQL: create, attach and detach
as objects with ids, extend, snapshots, and the refusals (409) and races of must-show 6. There is
no tree here: jobs stay pending until ``settle`` ends them as the job engine's writer would
(tests/api/test_volume_jobs.py checks what the engine sends)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import update

from cloudland_api.models import Instance, Job, Role
from tests.api.conftest import Api, Launcher, add_hypervisor, running, settle
from tests.api.test_networks import post as posted

API = "/api/v1"


def post(api: Api, headers: dict[str, str], path: str, body: dict[str, Any], status: int = 202) -> dict[str, Any]:
    """POST, asserting ``status`` (202: a change that started a job)."""
    return posted(api, headers, path, body, status)


def volume(api: Api, headers: dict[str, str], name: str = "data", size_gib: int = 1, **spec: Any) -> dict[str, Any]:
    """A volume created and its job ended ok: available."""
    accepted = post(api, headers, "volumes", {"name": name, "size_gib": size_gib} | spec)
    settle(api, accepted["job"]["id"])
    return get(api, headers, accepted["volume"]["id"])


def get(api: Api, headers: dict[str, str], volume_id: int) -> dict[str, Any]:
    reply = api.client.get(f"{API}/volumes/{volume_id}", headers=headers)
    assert reply.status_code == 200, reply.text
    result: dict[str, Any] = reply.json()
    return result


def attach(api: Api, headers: dict[str, str], volume_id: int, instance: int | str, status: int = 202) -> dict[str, Any]:
    return post(api, headers, f"volumes/{volume_id}/attachments", {"instance": instance}, status)


def detach(api: Api, headers: dict[str, str], volume_id: int, attachment_id: int) -> dict[str, Any]:
    reply = api.client.delete(f"{API}/volumes/{volume_id}/attachments/{attachment_id}", headers=headers)
    assert reply.status_code == 202, reply.text
    result: dict[str, Any] = reply.json()
    return result


def error(reply: dict[str, Any]) -> str:
    message: str = reply["error"]["message"]
    return message


def test_a_local_volume_is_made_on_the_instances_hypervisor_and_becomes_available(
        api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    vm = running(api, launch, "web", hypervisor=7)
    add_hypervisor(api, 3)
    accepted = post(api, admin_headers, "volumes", {"name": "data", "size_gib": 5, "instance": vm["id"]})
    made, job = accepted["volume"], accepted["job"]
    assert (made["status"], made["backend"], made["type"], made["hypervisor_id"]) == ("creating", "local", "local", 7)
    assert (job["kind"], job["action"], job["subject_type"], job["subject_id"]) == ("volume", "create", "volume",
                                                                                     made["id"])
    assert made["job_id"] == job["id"]
    settle(api, job["id"])
    assert get(api, admin_headers, made["id"])["status"] == "available"
    # Without an instance: the up hypervisor holding the fewest local volumes (3 has none).
    assert post(api, admin_headers, "volumes", {"name": "other", "size_gib": 1})["volume"]["hypervisor_id"] == 3


def test_bad_requests_are_4xx_naming_the_field(api: Api, admin_headers: dict[str, str]) -> None:
    add_hypervisor(api, 1)
    assert "size_gib is required" in error(post(api, admin_headers, "volumes", {"name": "v"}, 400))
    assert "not a volume type" in error(post(api, admin_headers, "volumes", {"name": "v", "size_gib": 1,
                                                                           "type": "gold"}, 400))
    post(api, admin_headers, "volumes", {"name": "v", "size_gib": 0}, 422)
    volume(api, admin_headers, "v")
    assert "already used" in error(post(api, admin_headers, "volumes", {"name": "v", "size_gib": 1}, 409))


def test_a_create_fails_terminally_and_says_why(api: Api, admin_headers: dict[str, str]) -> None:
    add_hypervisor(api, 1)
    accepted = post(api, admin_headers, "volumes", {"name": "v", "size_gib": 1})
    settle(api, accepted["job"]["id"], "failed", "qemu-img create failed: No space left (hypervisor 1)")
    made = get(api, admin_headers, accepted["volume"]["id"])
    assert made["status"] == "error" and "No space left" in made["status_reason"] and made["job_id"] is None


def test_attach_detach_are_objects_with_ids_and_devices_from_the_database(
        api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    vm = running(api, launch, "web", hypervisor=7)
    first = volume(api, admin_headers, "a", instance=vm["id"])
    second = volume(api, admin_headers, "b", instance=vm["id"])
    one = attach(api, admin_headers, first["id"], "web")
    attachment = one["volume"]["attachment"]
    assert (attachment["device"], attachment["status"], attachment["instance_id"]) == ("vdb", "attaching", vm["id"])
    assert one["job"]["action"] == "attach"
    settle(api, one["job"]["id"])
    two = attach(api, admin_headers, second["id"], vm["id"])
    assert two["volume"]["attachment"]["device"] == "vdc"  # the next free device of that instance
    settle(api, two["job"]["id"])
    assert get(api, admin_headers, first["id"])["attachment"]["status"] == "attached"
    # Attaching an attached volume, deleting an attached volume: 409, naming the attachment.
    assert f"attachment {attachment['id']}" in error(attach(api, admin_headers, first["id"], vm["id"], 409))
    reply = api.client.delete(f"{API}/volumes/{first['id']}", headers=admin_headers)
    assert reply.status_code == 409 and "detach it first" in error(reply.json())
    # Detach; a second detach is a success with nothing to do.
    gone = detach(api, admin_headers, first["id"], attachment["id"])
    assert gone["job"]["action"] == "detach" and gone["volume"]["attachment"]["status"] == "detaching"
    assert detach(api, admin_headers, first["id"], attachment["id"])["job"] is None  # while detaching
    settle(api, gone["job"]["id"])
    assert get(api, admin_headers, first["id"])["attachment"] is None
    assert detach(api, admin_headers, first["id"], attachment["id"])["job"] is None  # after
    # A stale detach never removes a newer attachment of the same volume.
    again = attach(api, admin_headers, first["id"], vm["id"])
    settle(api, again["job"]["id"])
    assert again["volume"]["attachment"]["device"] == "vdb"  # free again
    assert detach(api, admin_headers, first["id"], attachment["id"])["job"] is None
    assert get(api, admin_headers, first["id"])["attachment"]["id"] == again["volume"]["attachment"]["id"]


def test_a_failed_attach_leaves_nothing_attached_and_a_failed_detach_leaves_it_attached(
        api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    vm = running(api, launch, "web", hypervisor=7)
    made = volume(api, admin_headers, instance=vm["id"])
    failed = attach(api, admin_headers, made["id"], vm["id"])
    settle(api, failed["job"]["id"], "failed", "domain cl-x not found (hypervisor 7)")
    now = get(api, admin_headers, made["id"])
    assert now["attachment"] is None and "not found" in now["status_reason"] and now["status"] == "available"
    ok = attach(api, admin_headers, made["id"], vm["id"])
    settle(api, ok["job"]["id"])
    stuck = detach(api, admin_headers, made["id"], ok["volume"]["attachment"]["id"])
    settle(api, stuck["job"]["id"], "failed", "domain did not release volume (hypervisor 7)")
    assert get(api, admin_headers, made["id"])["attachment"]["status"] == "attached"


def test_a_local_volume_attaches_only_beside_it(api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    vm = running(api, launch, "web", hypervisor=7)
    add_hypervisor(api, 2)
    elsewhere = volume(api, admin_headers, "far")  # on 2: the fewest local volumes
    assert elsewhere["hypervisor_id"] == 2
    assert "local to hypervisor 2" in error(attach(api, admin_headers, elsewhere["id"], vm["id"], 409))


def test_an_attachment_goes_with_its_deleted_instance_and_the_volume_stays(
        api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    vm = running(api, launch, "web", hypervisor=7)
    made = volume(api, admin_headers, instance=vm["id"])
    settle(api, attach(api, admin_headers, made["id"], vm["id"])["job"]["id"])
    reply = api.client.delete(f"{API}/instances/{vm['id']}", headers=admin_headers)
    assert reply.status_code == 202, reply.text
    settle(api, reply.json()["id"])
    after = get(api, admin_headers, made["id"])
    assert after["attachment"] is None and after["status"] == "available"


def test_extend_snapshot_and_a_volume_from_the_snapshot(api: Api, admin_headers: dict[str, str]) -> None:
    add_hypervisor(api, 4)
    made = volume(api, admin_headers, size_gib=2)
    assert "never shrink" in error(post(api, admin_headers, f"volumes/{made['id']}/extend", {"size_gib": 2}, 400))
    grow = post(api, admin_headers, f"volumes/{made['id']}/extend", {"size_gib": 3})
    assert "busy with job" in error(post(api, admin_headers, f"volumes/{made['id']}/extend", {"size_gib": 4}, 409))
    settle(api, grow["job"]["id"])
    assert get(api, admin_headers, made["id"])["size_gib"] == 3
    taken = post(api, admin_headers, f"volumes/{made['id']}/snapshots", {"name": "s1"})
    assert taken["snapshot"]["status"] == "creating" and taken["job"]["action"] == "snapshot"
    settle(api, taken["job"]["id"])
    snaps = api.client.get(f"{API}/volumes/{made['id']}/snapshots", headers=admin_headers).json()["items"]
    assert [(s["name"], s["size_gib"], s["status"]) for s in snaps] == [("s1", 3, "available")]
    # A snapshotted volume is not deleted: 409 naming the snapshot.
    reply = api.client.delete(f"{API}/volumes/{made['id']}", headers=admin_headers)
    assert reply.status_code == 409 and f"has snapshots {snaps[0]['id']}" in error(reply.json())
    clone = post(api, admin_headers, "volumes", {"name": "copy", "snapshot": "s1", "size_gib": 5})
    assert (clone["volume"]["source_snapshot_id"], clone["volume"]["size_gib"], clone["volume"]["hypervisor_id"]) == (
        snaps[0]["id"], 5, 4)
    reply = api.client.delete(f"{API}/volumes/{made['id']}/snapshots/{snaps[0]['id']}", headers=admin_headers)
    assert reply.status_code == 409 and "being made from snapshot" in error(reply.json())
    settle(api, clone["job"]["id"])
    gone = api.client.delete(f"{API}/volumes/{made['id']}/snapshots/{snaps[0]['id']}", headers=admin_headers)
    assert gone.status_code == 202, gone.text
    settle(api, gone.json()["job"]["id"])
    assert api.client.get(f"{API}/volumes/{made['id']}/snapshots", headers=admin_headers).json()["items"] == []
    deleted = api.client.delete(f"{API}/volumes/{made['id']}", headers=admin_headers)
    assert deleted.status_code == 202 and deleted.json()["volume"]["status"] == "deleting"
    settle(api, deleted.json()["job"]["id"])
    assert api.client.get(f"{API}/volumes/{made['id']}", headers=admin_headers).status_code == 404


def test_readers_read_members_change_admins_delete(api: Api, admin_headers: dict[str, str]) -> None:
    add_hypervisor(api, 1)
    org = api.client.get(f"{API}/me", headers=admin_headers).json()["organisation"]
    member = api.add_user("mem", org, Role.member)
    reader = api.add_user("rdr", org, Role.reader)
    made = volume(api, member, "m")
    assert post(api, reader, "volumes", {"name": "r", "size_gib": 1}, 403)
    assert api.client.get(f"{API}/volumes/{made['id']}", headers=reader).status_code == 200
    assert api.client.delete(f"{API}/volumes/{made['id']}", headers=member).status_code == 403
    assert api.client.delete(f"{API}/volumes/{made['id']}", headers=admin_headers).status_code == 202
    other = api.add_user("stranger", "elsewhere", Role.admin)
    assert api.client.get(f"{API}/volumes/{made['id']}", headers=other).status_code == 404


def test_50_concurrent_attaches_of_one_volume_to_50_vms_exactly_one_succeeds(
        api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    """Must-show 6, on both databases: the rest are 409s, and one attachment exists."""
    vms = launch("vm", count=50)
    add_hypervisor(api, 7)
    with api.app.state.write_sessions() as session:
        session.execute(update(Instance).values(hypervisor_id=7))
        session.commit()
    for job in vms["jobs"]:
        settle(api, job["id"])
    made = volume(api, admin_headers, instance=vms["instances"][0]["id"])

    def one(instance: dict[str, Any]) -> int:
        return api.client.post(f"{API}/volumes/{made['id']}/attachments", json={"instance": instance["id"]},
                               headers=admin_headers).status_code

    with ThreadPoolExecutor(16) as pool:
        statuses = sorted(pool.map(one, vms["instances"]))
    assert statuses.count(202) == 1 and statuses.count(409) == 49, statuses
    assert get(api, admin_headers, made["id"])["attachment"]["device"] == "vdb"


def test_20_concurrent_boots_of_one_volume_exactly_one_wins_and_it_goes_with_its_vm_when_asked(
        api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    """Boot from volume on both databases: of 20 creates booting from one volume exactly one wins,
    the rest are 409s, and so is an attach of it then; the VM is placed beside the local volume
    by its job's ``host``; its delete makes the volume's delete job when the create asked for
    delete_on_termination."""
    holder = running(api, launch, "holder", hypervisor=7)  # and the flavor "small"
    made = volume(api, admin_headers, name="root", instance=holder["id"])

    accepted: list[dict[str, Any]] = []

    def boot(i: int) -> int:
        body = {"name": f"b{i}", "flavor": "small", "boot_volume": "root", "delete_on_termination": True}
        reply = api.client.post(f"{API}/instances", json=body, headers=admin_headers)
        accepted.extend(reply.json()["instances"] if reply.status_code == 202 else [])
        return reply.status_code

    def attach_it() -> int:
        return api.client.post(f"{API}/volumes/{made['id']}/attachments", json={"instance": holder["id"]},
                               headers=admin_headers).status_code

    with ThreadPoolExecutor(16) as pool:
        statuses = sorted(pool.map(boot, range(20)))
    assert statuses.count(202) == 1 and statuses.count(409) == 19, statuses
    assert [vm["boot_volume_id"] for vm in accepted] == [made["id"]]  # the create's answer shows it too
    assert attach_it() == 409
    attachment = get(api, admin_headers, made["id"])["attachment"]
    assert (attachment["device"], attachment["delete_on_termination"]) == ("vda", True)
    reply = api.client.get(f"{API}/instances/{attachment['instance_id']}", headers=admin_headers)
    vm = reply.json()
    assert (vm["image_id"], vm["disk_gib"], vm["boot_volume_id"]) == (None, 1, made["id"])
    listed = api.client.get(f"{API}/instances", headers=admin_headers).json()["items"]
    assert {i["name"]: i["boot_volume_id"] for i in listed} == {"holder": None, vm["name"]: made["id"]}
    with api.app.state.write_sessions() as session:
        job = session.get(Job, vm["job_id"])
        assert job is not None and job.args == {"host": 7}
        session.execute(update(Instance).where(Instance.id == vm["id"]).values(hypervisor_id=7))
        session.commit()
    settle(api, vm["job_id"])
    assert get(api, admin_headers, made["id"])["attachment"]["status"] == "attached"
    reply = api.client.delete(f"{API}/instances/{vm['id']}", headers=admin_headers)
    assert reply.status_code == 202, reply.text
    settle(api, reply.json()["id"])
    going = get(api, admin_headers, made["id"])
    assert (going["status"], going["attachment"]) == ("deleting", None) and going["job_id"] is not None
    with api.app.state.write_sessions() as session:
        job = session.get(Job, going["job_id"])
        assert job is not None and (job.kind, job.action, job.subject_id) == ("volume", "delete", made["id"])


@pytest.mark.parametrize("path", ["volumes/999", "volumes/999/snapshots"])
def test_unknown_volumes_are_404(api: Api, admin_headers: dict[str, str], path: str) -> None:
    reply = api.client.get(f"{API}/{path}", headers=admin_headers)
    assert reply.status_code == 404 and "volume 999" in error(reply.json())


def test_a_resize_waits_until_the_volumes_are_detached(api: Api, admin_headers: dict[str, str], launch: Launcher,
                                                       make_flavor: Any) -> None:
    """A resize redefines the domain from its record, which would lose the volume's identity."""
    vm = running(api, launch, "web", hypervisor=7)
    made = volume(api, admin_headers, instance=vm["id"])
    settle(api, attach(api, admin_headers, made["id"], vm["id"])["job"]["id"])
    stop = api.client.post(f"{API}/instances/{vm['id']}/stop", headers=admin_headers)
    settle(api, stop.json()["id"])
    make_flavor("big", vcpus=2)
    refused = api.client.post(f"{API}/instances/{vm['id']}/resize", json={"flavor": "big"}, headers=admin_headers)
    assert refused.status_code == 409 and f"volumes {made['id']} attached" in error(refused.json())


def test_a_volume_from_an_image(api: Api, admin_headers: dict[str, str], make_image: Any) -> None:
    add_hypervisor(api, 1)
    image = make_image("img")
    made = post(api, admin_headers, "volumes", {"name": "boot", "size_gib": 2, "image": "img"})
    assert made["volume"]["source_image_id"] == image["id"] and made["job"]["action"] == "create"
    make_image("empty", upload=False)
    assert "upload its file" in error(post(api, admin_headers, "volumes", {"name": "e", "size_gib": 1,
                                                                         "image": "empty"}, 409))
    assert "not both" in error(post(api, admin_headers, "volumes", {"name": "x", "size_gib": 1, "image": "img",
                                                                  "snapshot": 1}, 400))
    assert "size_gib is required" in error(post(api, admin_headers, "volumes", {"name": "y", "image": "img"}, 400))
