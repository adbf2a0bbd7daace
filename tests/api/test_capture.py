"""Capture: ``POST /instances/{id}/capture`` makes a ``saving`` image and a capture job; the
hypervisor uploads the disk with ``PUT /images/{id}/upload`` and the job's upload token.

No tree here: jobs are settled as the dispatcher's writer would, and the upload is sent
as the agent sends it (tests/realvm/test_api_to_qemu.py does the whole path on QEMU).
"""

from __future__ import annotations

import hashlib

from cloudland_api.jobs import guest as commands
from cloudland_api.models import Instance, Job, Role
from cloudland_api.security import IMAGE_AUDIENCE, UPLOAD_AUDIENCE, decode_image_token, issue_image_token
from cloudland_proto.v1 import compute_pb2 as cpb
from cloudland_proto.v1 import image_pb2 as ipb
from tests.api.conftest import Api, Launcher, settle
from tests.api.test_instances import INSTANCES, get, idle

IMAGES = "/api/v1/images"
QCOW2 = b"QFI\xfb" + b"\0" * 1020  # enough of a qcow2 head for the upload's magic check
OCTET = {"Content-Type": "application/octet-stream"}


def stopped(api: Api, admin_headers: dict[str, str], launch: Launcher, name: str = "vm") -> dict:
    """A placed instance, created and then stopped."""
    [instance] = idle(api, launch, name)
    reply = api.client.post(f"{INSTANCES}/{instance['id']}/stop", json={"force": True}, headers=admin_headers)
    assert reply.status_code == 202, reply.text
    settle(api, reply.json()["id"])
    assert get(api, admin_headers, instance["id"])["status"] == "stopped"
    return instance


def capture(api: Api, headers: dict[str, str], instance_id: int, name: str = "golden", **body: str) -> tuple[int, dict]:
    reply = api.client.post(f"{INSTANCES}/{instance_id}/capture", json={"name": name} | body, headers=headers)
    return reply.status_code, reply.json()


def upload_token(api: Api, image_id: int, audience: str = UPLOAD_AUDIENCE) -> dict[str, str]:
    token = issue_image_token(api.app.state.signing_key, image_id, 60, audience)
    return {"Authorization": f"Bearer {token}"}


def test_capture_makes_a_saving_image_and_a_job(api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    instance = stopped(api, admin_headers, launch)
    status, body = capture(api, admin_headers, instance["id"], disk_format="raw")
    assert status == 202, body
    image, job = body["image"], body["job"]
    assert (image["name"], image["status"], image["disk_format"], image["sha256"]) == ("golden", "saving", "raw", None)
    assert (job["action"], job["state"], job["instance_id"]) == ("capture", "pending", instance["id"])
    assert get(api, admin_headers, instance["id"])["job_id"] == job["id"]
    listed = api.client.get(IMAGES, headers=admin_headers).json()["items"]
    assert [(i["name"], i["status"]) for i in listed] == [("img", "active"), ("golden", "saving")]
    # Nobody boots from it or uploads into it by hand while it is being captured.
    reply = api.client.post(INSTANCES, json={"name": "x", "flavor": "small", "image": "golden"}, headers=admin_headers)
    assert reply.status_code == 409 and "saving" in reply.text, reply.text
    reply = api.client.put(f"{IMAGES}/{image['id']}/file", content=QCOW2, headers=admin_headers | OCTET)
    assert reply.status_code == 409 and "being captured" in reply.text, reply.text
    # The instance is busy until the job ends.
    assert capture(api, admin_headers, instance["id"], "other")[0] == 409


def test_refusals(api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    [running] = idle(api, launch, "up")
    status, body = capture(api, admin_headers, running["id"])
    assert status == 409 and "is running: cannot capture it; stop it first" in body["error"]["message"], body
    instance = stopped(api, admin_headers, launch, "down")
    status, body = capture(api, admin_headers, instance["id"], "img")  # the launcher's image
    assert status == 409 and "image name 'img' is already used" in body["error"]["message"], body
    assert capture(api, admin_headers, instance["id"], "bad name!")[0] == 422
    assert capture(api, admin_headers, instance["id"], disk_format="vmdk")[0] == 422
    assert capture(api, admin_headers, 99999)[0] == 404
    other = api.add_user("eve", "evil", Role.admin)
    status, body = capture(api, other, instance["id"])
    assert status == 404 and body["error"]["message"] == f"instance {instance['id']} not found", body
    reader = api.add_user("rita", "admin", Role.reader)
    assert capture(api, reader, instance["id"])[0] == 403
    # None of these left an image behind.
    assert [i["name"] for i in api.client.get(IMAGES, headers=admin_headers).json()["items"]] == ["img"]


def test_the_agent_uploads_with_the_job_token(api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    instance = stopped(api, admin_headers, launch)
    image = capture(api, admin_headers, instance["id"])[1]["image"]
    url = f"{IMAGES}/{image['id']}/upload"
    sha = hashlib.sha256(QCOW2).hexdigest()
    for headers, why in [({}, "missing bearer token"), (admin_headers, "invalid image upload token"),
                         (upload_token(api, image["id"], IMAGE_AUDIENCE), "invalid image upload token"),
                         (upload_token(api, image["id"] + 1), f"not for image {image['id']}")]:
        reply = api.client.put(url, content=QCOW2, headers=headers | OCTET)
        assert reply.status_code == 401 and why in reply.text, (why, reply.text)
    token = upload_token(api, image["id"])
    reply = api.client.put(url, content=QCOW2, headers=token | OCTET | {"X-Image-Sha256": "0" * 64})
    assert reply.status_code == 400 and "checksum mismatch" in reply.text, reply.text
    reply = api.client.put(url, content=QCOW2, headers=token | OCTET | {"X-Image-Sha256": sha})
    assert reply.status_code == 200, reply.text
    assert (reply.json()["status"], reply.json()["sha256"], reply.json()["size_bytes"]) == ("active", sha, len(QCOW2))
    # A replayed job sends the same bytes again: success; other bytes: refused.
    assert api.client.put(url, content=QCOW2, headers=token | OCTET).status_code == 200
    reply = api.client.put(url, content=QCOW2 + b"x", headers=token | OCTET)
    assert reply.status_code == 409 and "is active, not being captured" in reply.text, reply.text
    downloaded = api.client.get(f"{IMAGES}/{image['id']}/file", headers=admin_headers)
    assert downloaded.status_code == 200 and downloaded.content == QCOW2
    # A user's queued image takes no upload token.
    queued = api.client.post(IMAGES, json={"name": "q"}, headers=admin_headers).json()
    reply = api.client.put(f"{IMAGES}/{queued['id']}/upload", content=QCOW2, headers=upload_token(api, queued["id"]) | OCTET)
    assert reply.status_code == 409 and "is queued, not being captured" in reply.text, reply.text


def test_the_job_settles_the_instance_and_the_image(api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    instance = stopped(api, admin_headers, launch)
    body = capture(api, admin_headers, instance["id"])[1]
    settle(api, body["job"]["id"], "failed", "hypervisor 1: VM 'x' has no disk to capture")
    image = api.client.get(f"{IMAGES}/{body['image']['id']}", headers=admin_headers).json()
    assert image["status"] == "error"
    after = get(api, admin_headers, instance["id"])
    assert (after["status"], after["job_id"]) == ("stopped", None)
    assert "capture failed: hypervisor 1: VM 'x' has no disk" in after["status_reason"]
    # The failed image is the user's to delete; then its name is free for another try.
    assert api.client.delete(f"{IMAGES}/{image['id']}", headers=admin_headers).status_code == 204
    body = capture(api, admin_headers, instance["id"])[1]
    reply = api.client.put(f"{IMAGES}/{body['image']['id']}/upload", content=QCOW2,
                           headers=upload_token(api, body["image"]["id"]) | OCTET)
    assert reply.status_code == 200, reply.text
    settle(api, body["job"]["id"])
    assert get(api, admin_headers, instance["id"])["status"] == "stopped"
    assert api.client.get(f"{IMAGES}/{body['image']['id']}", headers=admin_headers).json()["status"] == "active"
    # The captured image boots new instances.
    reply = api.client.post(INSTANCES, json={"name": "clone", "flavor": "small", "image": "golden"},
                            headers=admin_headers)
    assert reply.status_code == 202, reply.text


def test_an_image_deleted_while_saving_fails_the_job_cleanly(api: Api, admin_headers: dict[str, str],
                                                            launch: Launcher) -> None:
    instance = stopped(api, admin_headers, launch)
    body = capture(api, admin_headers, instance["id"])[1]
    assert api.client.delete(f"{IMAGES}/{body['image']['id']}", headers=admin_headers).status_code == 204
    reply = api.client.put(f"{IMAGES}/{body['image']['id']}/upload", content=QCOW2,
                           headers=upload_token(api, body["image"]["id"]) | OCTET)
    assert reply.status_code == 404 and "deleted while it was being captured" in reply.text, reply.text
    settle(api, body["job"]["id"], "failed", "upload of image ... failed: HTTP 404")
    assert get(api, admin_headers, instance["id"])["status"] == "stopped"


def test_the_agent_is_sent_where_to_upload(api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    instance = stopped(api, admin_headers, launch)
    body = capture(api, admin_headers, instance["id"], disk_format="raw")[1]
    source = commands.GuestSource("http://api.example:8080/api/v1/images", api.app.state.signing_key, 3600)
    with api.app.state.sessions() as session:
        job = session.get(Job, body["job"]["id"])
        row = session.get(Instance, instance["id"])
        assert job is not None and row is not None
        target = source.capture_target(job.args["image_id"], job.args["disk_format"], 7200)
        request = commands.agent_request(job, row, target=target)
    image_id = body["image"]["id"]
    assert isinstance(request, cpb.VmCaptureRequest)
    token = request.target.token
    request.target.ClearField("token")
    assert request == cpb.VmCaptureRequest(name=row.domain_name, target=ipb.ImageTarget(
        image_id=image_id, disk_format="raw", url=f"http://api.example:8080/api/v1/images/{image_id}/upload"))
    assert decode_image_token(api.app.state.signing_key, token, UPLOAD_AUDIENCE) == image_id
