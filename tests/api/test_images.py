"""Images end to end: create, upload (checked and streamed to disk), download, delete, roles, isolation."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator

import httpx2 as httpx
import pytest

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloudland_api.services import images as catalog
from cloudland_api.app import create_app
from cloudland_api.services.images import QCOW2_MAGIC, WRITE_BATCH
from cloudland_api.models import Organisation, Role, User
from cloudland_api.security import issue_image_token
from cloudland_api.services.identity import caller_for
from cloudland_api.settings import ApiSettings
from tests.api.conftest import Api

IMAGES = "/api/v1/images"
OCTET = {"Content-Type": "application/octet-stream"}
# Several write batches fit under the limit, so the multi-batch path is covered too,
# and a body just over it is still cheap to send.
LIMIT = 3 * WRITE_BATCH


@pytest.fixture
def settings(settings: ApiSettings) -> ApiSettings:
    """The conftest settings (SQLite and PostgreSQL) with a small upload limit."""
    return settings.replace(max_image_bytes=LIMIT)


def qcow2_bytes(size: int = 4096) -> bytes:
    return QCOW2_MAGIC + os.urandom(size - len(QCOW2_MAGIC))


def image_files(api: Api) -> list[str]:
    """Everything in <state_dir>/images, temporary upload files included."""
    directory = api.settings.state_dir / "images"
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def create(api: Api, headers: dict[str, str], name: str = "img", disk_format: str = "raw") -> dict:
    reply = api.client.post(IMAGES, json={"name": name, "disk_format": disk_format}, headers=headers)
    assert reply.status_code == 201, reply.text
    return reply.json()


def upload(
    api: Api, headers: dict[str, str], image_id: int, body: bytes | Iterator[bytes], **extra: str
) -> httpx.Response:
    return api.client.put(f"{IMAGES}/{image_id}/file", content=body, headers=headers | OCTET | extra)


def assert_untouched(api: Api, headers: dict[str, str], image_id: int) -> None:
    """A refused upload leaves the image queued and no file (final or temporary) behind."""
    image = api.client.get(f"{IMAGES}/{image_id}", headers=headers).json()
    assert (image["status"], image["size_bytes"], image["sha256"]) == ("queued", 0, None)
    assert image_files(api) == []


def test_raw_upload_activates_and_downloads(api: Api, admin_headers: dict[str, str]) -> None:
    image = create(api, admin_headers, "disk", "raw")
    assert (image["status"], image["size_bytes"], image["sha256"], image["arch"]) == ("queued", 0, None, "x86_64")
    url = f"{IMAGES}/{image['id']}"
    early = api.client.get(f"{url}/file", headers=admin_headers)
    assert early.status_code == 409 and "no data yet" in early.json()["error"]["message"]

    data = os.urandom(10_000)
    reply = upload(api, admin_headers, image["id"], data)
    assert reply.status_code == 200, reply.text
    active = reply.json()
    assert (active["status"], active["size_bytes"], active["sha256"]) == (
        "active", len(data), hashlib.sha256(data).hexdigest())
    assert api.client.get(url, headers=admin_headers).json() == active
    assert image_files(api) == [f"{image['id']}.raw"]
    assert (api.settings.state_dir / "images" / f"{image['id']}.raw").read_bytes() == data

    download = api.client.get(f"{url}/file", headers=admin_headers)
    assert download.status_code == 200
    assert download.content == data
    assert download.headers["content-type"] == "application/octet-stream"
    assert download.headers["x-image-sha256"] == hashlib.sha256(data).hexdigest()


def test_qcow2_streamed_across_write_batches(api: Api, admin_headers: dict[str, str]) -> None:
    image = create(api, admin_headers, "big", "qcow2")
    data = qcow2_bytes(2 * WRITE_BATCH + 12345)

    def chunked() -> Iterator[bytes]:
        # No Content-Length (chunked), and the magic split over the first chunks.
        yield data[:1]
        yield data[1:3]
        for start in range(3, len(data), 64 * 1024):
            yield data[start:start + 64 * 1024]

    digest = hashlib.sha256(data).hexdigest()
    # The checksum header is case-insensitive; a media type parameter is allowed.
    reply = upload(api, admin_headers, image["id"], chunked(), **{
        "X-Image-Sha256": digest.upper(), "Content-Type": "application/octet-stream; charset=binary"})
    assert reply.status_code == 200, reply.text
    assert (reply.json()["status"], reply.json()["size_bytes"], reply.json()["sha256"]) == ("active", len(data), digest)
    assert image_files(api) == [f"{image['id']}.qcow2"]
    download = api.client.get(f"{IMAGES}/{image['id']}/file", headers=admin_headers)
    assert download.content == data and download.headers["x-image-sha256"] == digest


@pytest.mark.parametrize("body", [b"not a qcow2 image at all", b"QF", b"\x00" * (WRITE_BATCH + 10)],
                         ids=["text", "shorter-than-magic", "zeros-past-one-batch"])
def test_qcow2_image_refuses_other_bytes(api: Api, admin_headers: dict[str, str], body: bytes) -> None:
    image = create(api, admin_headers, "q", "qcow2")
    reply = upload(api, admin_headers, image["id"], body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["code"] == "invalid_request" and "qcow2 magic" in error["message"]
    assert_untouched(api, admin_headers, image["id"])
    # The refusal does not burn the image: a real qcow2 upload still works.
    assert upload(api, admin_headers, image["id"], qcow2_bytes()).status_code == 200


def test_raw_image_refuses_qcow2_bytes_naming_both_formats(api: Api, admin_headers: dict[str, str]) -> None:
    # Issue 16: a qcow2 file declared raw was stored as raw, and would boot its header as a disk.
    image = create(api, admin_headers, "x.qcow2", "raw")
    reply = upload(api, admin_headers, image["id"], qcow2_bytes())
    assert reply.status_code == 400, reply.text
    message = reply.json()["error"]["message"]
    assert f"image {image['id']} (x.qcow2)" in message and "disk_format is raw but the data is qcow2" in message
    assert_untouched(api, admin_headers, image["id"])
    assert upload(api, admin_headers, image["id"], b"\0" * 512).status_code == 200  # raw bytes: still fine


@pytest.mark.parametrize("content_type", [None, "application/json", "application/x-www-form-urlencoded", "text/plain"])
def test_wrong_content_type_is_415(api: Api, admin_headers: dict[str, str], content_type: str | None) -> None:
    image = create(api, admin_headers)
    headers = admin_headers | ({"Content-Type": content_type} if content_type else {})
    reply = api.client.put(f"{IMAGES}/{image['id']}/file", content=b"raw bytes", headers=headers)
    assert reply.status_code == 415, reply.text
    assert "application/octet-stream" in reply.json()["error"]["message"]
    assert_untouched(api, admin_headers, image["id"])


def test_checksum_mismatch_is_400_and_leaves_nothing(api: Api, admin_headers: dict[str, str]) -> None:
    image = create(api, admin_headers)
    data = b"the bytes that were sent"
    wrong = hashlib.sha256(b"the bytes that were meant").hexdigest()
    reply = upload(api, admin_headers, image["id"], data, **{"X-Image-Sha256": wrong})
    assert reply.status_code == 400, reply.text
    message = reply.json()["error"]["message"]
    assert "checksum mismatch" in message and wrong in message and hashlib.sha256(data).hexdigest() in message
    assert_untouched(api, admin_headers, image["id"])
    malformed = upload(api, admin_headers, image["id"], data, **{"X-Image-Sha256": "abc"})
    assert malformed.status_code == 422 and "x-image-sha256 (header)" in malformed.json()["error"]["message"]
    assert_untouched(api, admin_headers, image["id"])


@pytest.mark.parametrize("streamed", [False, True], ids=["content-length", "chunked"])
def test_upload_over_the_limit_is_413(api: Api, admin_headers: dict[str, str], streamed: bool) -> None:
    image = create(api, admin_headers)
    data = os.urandom(LIMIT + 1)
    # With Content-Length the limit is checked before reading; chunked, while reading.
    body = iter([data[:WRITE_BATCH], data[WRITE_BATCH:]]) if streamed else data
    reply = upload(api, admin_headers, image["id"], body)
    assert reply.status_code == 413, reply.text
    assert reply.json()["error"]["code"] == "payload_too_large" and str(LIMIT) in reply.json()["error"]["message"]
    assert_untouched(api, admin_headers, image["id"])
    exactly = upload(api, admin_headers, image["id"], data[:LIMIT])
    assert exactly.status_code == 200 and exactly.json()["size_bytes"] == LIMIT


def test_second_upload_to_active_image_is_409(api: Api, admin_headers: dict[str, str]) -> None:
    image = create(api, admin_headers)
    first = upload(api, admin_headers, image["id"], b"first").json()
    reply = upload(api, admin_headers, image["id"], b"second")
    assert reply.status_code == 409 and "already active" in reply.json()["error"]["message"]
    assert api.client.get(f"{IMAGES}/{image['id']}", headers=admin_headers).json() == first
    assert api.client.get(f"{IMAGES}/{image['id']}/file", headers=admin_headers).content == b"first"
    assert image_files(api) == [f"{image['id']}.raw"]


def test_empty_body_is_400(api: Api, admin_headers: dict[str, str]) -> None:
    image = create(api, admin_headers)
    reply = upload(api, admin_headers, image["id"], b"")
    assert reply.status_code == 400 and "empty" in reply.json()["error"]["message"]
    assert_untouched(api, admin_headers, image["id"])


def test_delete_removes_row_and_file(api: Api, admin_headers: dict[str, str]) -> None:
    image = create(api, admin_headers)
    queued = create(api, admin_headers, "never-uploaded")
    assert upload(api, admin_headers, image["id"], b"bytes").status_code == 200
    url = f"{IMAGES}/{image['id']}"
    reply = api.client.delete(url, headers=admin_headers)
    assert reply.status_code == 204 and reply.content == b""
    assert image_files(api) == []
    for method, path in (("get", url), ("get", f"{url}/file"), ("delete", url)):
        assert api.client.request(method, path, headers=admin_headers).status_code == 404, (method, path)
    assert api.client.delete(f"{IMAGES}/{queued['id']}", headers=admin_headers).status_code == 204
    assert len(api.client.get(IMAGES, headers=admin_headers).json()["items"]) == 0


def test_organisations_are_isolated(api: Api, admin_headers: dict[str, str]) -> None:
    mine = create(api, admin_headers, "same-name")
    assert upload(api, admin_headers, mine["id"], b"secret bytes").status_code == 200
    queued = create(api, admin_headers, "queued")
    org_b = api.add_user("bob", "org-b", Role.admin)
    url = f"{IMAGES}/{mine['id']}"
    for method, path in (("get", url), ("get", f"{url}/file"), ("delete", url)):
        reply = api.client.request(method, path, headers=org_b)
        assert reply.status_code == 404 and reply.json()["error"]["code"] == "not_found", (method, path)
    assert upload(api, org_b, queued["id"], b"intruder").status_code == 404
    assert api.client.get(IMAGES, headers=org_b).json() == {"items": [], "limit": 50, "next_after": None}
    assert create(api, org_b, "same-name")["id"] != mine["id"]  # names are unique per organisation only
    assert api.client.get(f"{url}/file", headers=admin_headers).content == b"secret bytes"
    assert api.client.get(f"{IMAGES}/{queued['id']}", headers=admin_headers).json()["status"] == "queued"


def test_reader_can_read_but_not_write(api: Api, admin_headers: dict[str, str]) -> None:
    active = create(api, admin_headers, "active")
    assert upload(api, admin_headers, active["id"], b"data").status_code == 200
    queued = create(api, admin_headers, "queued")
    reader = api.add_user("rita", "admin", Role.reader)
    assert len(api.client.get(IMAGES, headers=reader).json()["items"]) == 2
    assert api.client.get(f"{IMAGES}/{active['id']}", headers=reader).status_code == 200
    assert api.client.get(f"{IMAGES}/{active['id']}/file", headers=reader).content == b"data"
    refused = [
        api.client.post(IMAGES, json={"name": "mine"}, headers=reader),
        upload(api, reader, queued["id"], b"data"),
        api.client.delete(f"{IMAGES}/{active['id']}", headers=reader),
    ]
    for reply in refused:
        assert reply.status_code == 403 and reply.json()["error"]["code"] == "forbidden", reply.text
    assert len(api.client.get(IMAGES, headers=admin_headers).json()["items"]) == 2
    assert api.client.get(f"{IMAGES}/{queued['id']}", headers=admin_headers).json()["status"] == "queued"
    assert image_files(api) == [f"{active['id']}.raw"]


def test_member_can_create_upload_and_delete(api: Api) -> None:
    member = api.add_user("max", "admin", Role.member)
    image = create(api, member, "members", "qcow2")
    assert upload(api, member, image["id"], qcow2_bytes()).status_code == 200
    assert api.client.delete(f"{IMAGES}/{image['id']}", headers=member).status_code == 204
    assert image_files(api) == []


def test_duplicate_name_is_409(api: Api, admin_headers: dict[str, str]) -> None:
    create(api, admin_headers, "dup", "qcow2")
    reply = api.client.post(IMAGES, json={"name": "dup", "disk_format": "raw"}, headers=admin_headers)
    assert reply.status_code == 409
    assert reply.json()["error"]["code"] == "conflict" and "'dup'" in reply.json()["error"]["message"]
    assert len(api.client.get(IMAGES, headers=admin_headers).json()["items"]) == 1



def test_a_deleted_images_id_is_never_reused(api: Api, admin_headers: dict[str, str]) -> None:
    # An upload still streaming into a deleted image must not find a new image under its id.
    first = create(api, admin_headers, "first")
    assert api.client.delete(f"{IMAGES}/{first['id']}", headers=admin_headers).status_code == 204
    assert create(api, admin_headers, "second")["id"] > first["id"]


def test_agents_download_with_a_token_for_that_image_only(api: Api, admin_headers: dict[str, str]) -> None:
    body = os.urandom(3000)
    image = create(api, admin_headers, "agent-img")
    assert upload(api, admin_headers, image["id"], body).status_code == 200
    other = create(api, admin_headers, "other-img")
    key = api.app.state.signing_key
    token = {"Authorization": f"Bearer {issue_image_token(key, image['id'], 60)}"}
    reply = api.client.get(f"{IMAGES}/{image['id']}/download", headers=token)
    assert reply.status_code == 200 and reply.content == body
    assert reply.headers["x-image-sha256"] == hashlib.sha256(body).hexdigest()
    refused = [
        api.client.get(f"{IMAGES}/{other['id']}/download", headers=token),          # another image
        api.client.get(f"{IMAGES}/{image['id']}/download", headers=admin_headers),  # a user's token
        api.client.get(f"{IMAGES}/{image['id']}/download"),                         # none
        api.client.get(f"{IMAGES}/{image['id']}/file", headers=token),              # not a user's token
        api.client.get(IMAGES, headers=token),
    ]
    assert [r.status_code for r in refused] == [401] * 5, [r.text for r in refused]


def test_delete_says_what_hypervisors_may_evict(api: Api, admin_headers: dict[str, str]) -> None:
    """The cached base is named by content and shared by every tenant: evictable only once no
    image of any organisation has those bytes any more. Then the delete commits an ``evict`` job
    for them with it (api/jobs/image.py)."""
    body = b"\x07" * 4096
    other = api.add_user("olga", "other-org", Role.admin)
    ids = []
    for name, headers in (("a", admin_headers), ("b", other), ("queued", admin_headers)):
        image = api.client.post("/api/v1/images", json={"name": name, "disk_format": "raw"}, headers=headers).json()
        if name != "queued":
            reply = api.client.put(f"/api/v1/images/{image['id']}/file", content=body,
                                   headers=headers | {"Content-Type": "application/octet-stream"})
            assert reply.status_code == 200, reply.text
        ids.append((image["id"], headers))
    with api.app.state.write_sessions() as session:
        def delete(image_id: int, user: str, org: str) -> str | None:
            user_id, org_id = _ids(session, user, org)
            job = catalog.delete_image(session, caller_for(session, user_id, org_id), image_id,
                                       api.settings.state_dir)
            if job is None:
                return None
            assert (job.kind, job.action, job.subject, job.org_id, job.state.value) == (
                "image", "evict", ("image", image_id), org_id, "pending")
            return str(job.args["sha256"])

        assert delete(ids[2][0], "admin", "admin") is None  # never uploaded: nobody cached it
        assert delete(ids[0][0], "admin", "admin") is None  # org "other-org" has the same bytes
        assert delete(ids[1][0], "olga", "other-org") == hashlib.sha256(body).hexdigest()


def _ids(session: Session, username: str, org: str) -> tuple[int, int]:
    user_id = session.scalar(select(User.id).where(User.username == username))
    org_id = session.scalar(select(Organisation.id).where(Organisation.name == org))
    assert user_id is not None and org_id is not None
    return user_id, org_id


def test_a_start_removes_uploads_abandoned_by_a_dead_api(settings: ApiSettings) -> None:
    """An API killed mid-upload leaves its temporary file; the next start removes it once it is a
    day old (a file written recently may be another API process's upload in progress)."""
    images = settings.state_dir / "images"
    images.mkdir(parents=True)
    dead, live = images / ".upload-3-abc.part", images / ".upload-4-def.part"
    for path in (dead, live):
        path.write_bytes(b"QFI\xfb")
    os.utime(dead, (time.time() - 2 * 86400, time.time() - 2 * 86400))
    app = create_app(settings)
    app.state.engine.dispose()
    assert sorted(p.name for p in images.iterdir()) == [live.name]
