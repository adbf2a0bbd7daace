"""Instances end to end: create in batches, references, listing, actions, busy instances, tenancy.

There is no tree here: jobs stay ``pending`` until a test ends them with ``settle`` (the
dispatcher's own bookkeeping), which is how an instance becomes idle for its next action.
"""

from __future__ import annotations

import base64
import threading

from sqlalchemy import select

from cloudland_api.models import Hypervisor, Instance, Role
from tests.api.conftest import Api, FlavorMaker, ImageMaker, Launcher, settle

INSTANCES = "/api/v1/instances"
JOBS = "/api/v1/jobs"


def ssh_key(api: Api, headers: dict[str, str], name: str = "key") -> dict:
    blob = b"".join(len(f).to_bytes(4, "big") + f for f in (b"ssh-ed25519", b"\x11" * 32))  # RFC 4251 strings
    line = "ssh-ed25519 " + base64.b64encode(blob).decode()
    reply = api.client.post("/api/v1/ssh-keys", json={"name": name, "public_key": line}, headers=headers)
    assert reply.status_code == 201, reply.text
    return reply.json()


def post(api: Api, headers: dict[str, str], **body: object) -> tuple[int, dict]:
    reply = api.client.post(INSTANCES, json={"flavor": "small", "image": "img"} | body, headers=headers)
    return reply.status_code, reply.json()


def place(api: Api, instance_ids: list[int], hypervisor: int = 1) -> None:
    """Put instances on ``hypervisor`` (added if new) as the dispatcher's planner would."""
    with api.app.state.write_sessions() as session:
        if session.get(Hypervisor, hypervisor) is None:
            session.add(Hypervisor(id=hypervisor, hostname=f"hv{hypervisor}", cpus=64, memory_mib=1 << 20))
            session.flush()
        for instance in session.scalars(select(Instance).where(Instance.id.in_(instance_ids))):
            instance.hypervisor_id = hypervisor
        session.commit()


def idle(api: Api, launch: Launcher, name: str = "vm", count: int = 1) -> list[dict]:
    """Instances placed on hypervisor 1 whose create job succeeded: ``running`` and free for their next action."""
    accepted = launch(name, count)
    place(api, [i["id"] for i in accepted["instances"]])
    for job in accepted["jobs"]:
        settle(api, job["id"])
    return accepted["instances"]


def get(api: Api, headers: dict[str, str], instance_id: int) -> dict:
    reply = api.client.get(f"{INSTANCES}/{instance_id}", headers=headers)
    assert reply.status_code == 200, reply.text
    return reply.json()


def jobs_of(api: Api, headers: dict[str, str], instance_id: int) -> list[str]:
    items = api.client.get(JOBS, params={"instance": instance_id}, headers=headers).json()["items"]
    return [j["action"] for j in items]


def test_create_one_by_name(api: Api, admin_headers: dict[str, str], make_flavor: FlavorMaker,
                            make_image: ImageMaker) -> None:
    flavor = make_flavor("small", vcpus=2, memory_mib=1024, disk_gib=5)
    image = make_image("img")
    key = ssh_key(api, admin_headers)
    status, body = post(api, admin_headers, name="web", ssh_key="key")
    assert status == 202, body
    [instance], [job] = body["instances"], body["jobs"]
    assert instance["name"] == "web" and instance["status"] == "building" and instance["job_id"] == job["id"]
    assert [instance[k] for k in ("flavor_id", "image_id", "ssh_key_id")] == [flavor["id"], image["id"], key["id"]]
    assert [instance[k] for k in ("vcpus", "memory_mib", "disk_gib", "hypervisor_id")] == [2, 1024, 5, None]
    assert [job[k] for k in ("action", "state", "batch", "instance_id")] == ["create", "pending", body["batch"],
                                                                              instance["id"]]
    assert get(api, admin_headers, instance["id"]) == instance


def test_create_many_by_id(api: Api, admin_headers: dict[str, str], make_flavor: FlavorMaker,
                           make_image: ImageMaker) -> None:
    flavor, image, key = make_flavor("small"), make_image("img"), ssh_key(api, admin_headers)
    status, body = post(api, admin_headers, name="web", count=3, flavor=flavor["id"], image=image["id"],
                        ssh_key=key["id"])
    assert status == 202, body
    assert [i["name"] for i in body["instances"]] == ["web-1", "web-2", "web-3"]
    assert len({i["uuid"] for i in body["instances"]}) == 3
    assert {j["batch"] for j in body["jobs"]} == {body["batch"]}
    assert {(j["state"], j["action"]) for j in body["jobs"]} == {("pending", "create")}
    assert {i["job_id"]: i["id"] for i in body["instances"]} == {j["id"]: j["instance_id"] for j in body["jobs"]}
    assert {i["status"] for i in body["instances"]} == {"building"}


def test_unknown_references_are_404_naming_them(api: Api, admin_headers: dict[str, str], make_flavor: FlavorMaker,
                                               make_image: ImageMaker) -> None:
    make_flavor("small")
    make_image("img")
    for field, value, shown in [("flavor", "tiny", "flavor 'tiny'"), ("flavor", 4242, "flavor 4242"),
                                ("image", "nope", "image 'nope'"), ("image", 4242, "image 4242"),
                                ("ssh_key", "lost", "ssh key 'lost'"), ("ssh_key", 4242, "ssh key 4242")]:
        status, body = post(api, admin_headers, name="vm", **{field: value})
        assert status == 404, (field, body)
        assert body["error"]["code"] == "not_found" and shown in body["error"]["message"], body
    assert api.client.get(INSTANCES, headers=admin_headers).json()["items"] == []


def test_create_refusals(api: Api, admin_headers: dict[str, str], make_flavor: FlavorMaker,
                         make_image: ImageMaker) -> None:
    make_flavor("small")
    make_image("img")
    make_image("empty", upload=False)
    status, body = post(api, admin_headers, name="vm", image="empty")
    assert status == 409 and "queued" in body["error"]["message"] and "upload" in body["error"]["message"]
    for count in (0, -1, 1001, "5", 2.0, True):
        status, body = post(api, admin_headers, name="vm", count=count)
        assert status == 422 and "count" in body["error"]["message"], (count, body)
    status, body = post(api, admin_headers, name="n" * 62, count=10)  # n...n-10 is 65 characters
    assert status == 400 and "n" * 62 + "-10" in body["error"]["message"], body
    assert api.client.get(INSTANCES, headers=admin_headers).json()["items"] == []
    status, body = post(api, admin_headers, name="n" * 62, count=9)   # n...n-9 is exactly 64
    assert status == 202 and body["instances"][-1]["name"] == "n" * 62 + "-9"


def test_live_name_taken_is_409(api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    launch("web")
    launch("db", count=2)
    for name, count, taken in [("web", 1, "'web' is already used"), ("db-2", 1, "'db-2' is already used"),
                               ("db", 3, "'db-1' is already used in this project (and 1 more)")]:
        status, body = post(api, admin_headers, name=name, count=count)
        assert status == 409 and taken in body["error"]["message"], (name, body)
    launch("db")  # "db" itself is free: only db-1 and db-2 are taken
    assert len(api.client.get(INSTANCES, headers=admin_headers).json()["items"]) == 4


def test_reader_cannot_create_or_act(api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    [instance] = idle(api, launch)
    reader = api.add_user("rita", "admin", Role.reader)
    status, body = post(api, reader, name="mine")
    assert status == 403 and body["error"]["code"] == "forbidden"
    assert api.client.post(f"{INSTANCES}/{instance['id']}/stop", headers=reader).status_code == 403
    assert api.client.delete(f"{INSTANCES}/{instance['id']}", headers=reader).status_code == 403
    actions = {"action": "stop", "ids": [instance["id"]]}
    assert api.client.post(f"{INSTANCES}/actions", json=actions, headers=reader).status_code == 403
    assert get(api, reader, instance["id"])["job_id"] is None  # reading is allowed, and nothing started


def test_another_organisations_references_are_404(api: Api, admin_headers: dict[str, str], make_flavor: FlavorMaker,
                                                  make_image: ImageMaker) -> None:
    mine_flavor, mine_image = make_flavor("small"), make_image("img")
    bob = api.add_user("bob", "org-b", Role.admin)
    their_flavor, their_image = make_flavor("theirs", headers=bob), make_image("their-img", headers=bob)
    for body in ({"flavor": their_flavor["id"]}, {"flavor": "theirs"}, {"image": their_image["id"]},
                 {"image": "their-img"}):
        status, reply = post(api, admin_headers, name="vm", **body)
        assert status == 404, (body, reply)
    status, reply = post(api, bob, name="vm", flavor=mine_flavor["id"], image=mine_image["id"])
    assert status == 404 and f"flavor {mine_flavor['id']}" in reply["error"]["message"]


def test_keyset_pagination_sees_each_instance_once(api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    ids = [i["id"] for i in launch("vm", count=7)["instances"]]
    seen: list[int] = []
    after: str | None = None
    for _ in range(3):  # 3 + 3 + 1
        page = api.client.get(INSTANCES, params={"limit": 3} | ({"after": after} if after else {}),
                              headers=admin_headers).json()
        assert page["limit"] == 3 and len(page["items"]) == min(3, 7 - len(seen))
        seen, after = seen + [i["id"] for i in page["items"]], page["next_after"]
    assert seen == sorted(ids) and after is None


def test_filters(api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    web = launch("web", count=2)["instances"]
    for name in ("db-1", "a_b", "axb", "Web-9"):
        launch(name)
    settle(api, web[0]["job_id"])
    place(api, [web[1]["id"]], hypervisor=7)

    def names(**params: object) -> list[str]:
        reply = api.client.get(INSTANCES, params=params, headers=admin_headers)
        assert reply.status_code == 200, reply.text
        return [i["name"] for i in reply.json()["items"]]

    assert names(name="web-*") == ["web-1", "web-2"]  # a glob is case-sensitive, on every database
    assert names(name="db-?") == ["db-1"]
    assert names(name="*-*") == ["web-1", "web-2", "db-1", "Web-9"]
    # '_' and '%' are literal characters in a glob, not LIKE wildcards.
    assert names(name="a_b") == ["a_b"]
    assert names(name="a%") == [] and names(name="%") == [] and names(name="[aw]*") == []
    assert names(status="running") == ["web-1"]
    assert names(status="building", name="web-*") == ["web-2"]
    assert names(hypervisor=7) == ["web-2"] and names(hypervisor=8) == []
    assert api.client.get(INSTANCES, params={"status": "sleeping"}, headers=admin_headers).status_code == 422


def test_delete_hides_and_frees_the_name(api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    [instance] = idle(api, launch, "web")
    url = f"{INSTANCES}/{instance['id']}"
    reply = api.client.delete(url, headers=admin_headers)
    assert reply.status_code == 202 and (reply.json()["action"], reply.json()["state"]) == ("delete", "pending")
    assert get(api, admin_headers, instance["id"])["status"] == "deleting"
    assert [i["status"] for i in api.client.get(INSTANCES, headers=admin_headers).json()["items"]] == ["deleting"]
    assert post(api, admin_headers, name="web")[0] == 409  # still live until the delete succeeds
    settle(api, reply.json()["id"])
    gone = get(api, admin_headers, instance["id"])  # a deleted instance can still be read by id
    assert (gone["status"], gone["job_id"]) == ("deleted", None)
    assert api.client.get(INSTANCES, headers=admin_headers).json()["items"] == []
    deleted = api.client.get(INSTANCES, params={"status": "deleted"}, headers=admin_headers).json()["items"]
    assert [i["id"] for i in deleted] == [instance["id"]]
    assert api.client.post(f"{url}/start", headers=admin_headers).status_code == 409
    again = launch("web")["instances"][0]
    assert again["id"] != instance["id"] and again["name"] == "web"


def test_another_organisations_instance_is_404(api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    [instance] = idle(api, launch)
    bob = api.add_user("bob", "org-b", Role.admin)
    url = f"{INSTANCES}/{instance['id']}"
    requests = [("get", url, None), ("delete", url, None), ("post", f"{url}/start", None),
                ("post", f"{url}/stop", None), ("post", f"{url}/reboot", None),
                ("post", f"{url}/resize", {"flavor": "small"}), ("post", f"{url}/rebuild", {"image": "img"}),
                ("post", f"{INSTANCES}/actions", {"action": "stop", "ids": [instance["id"]]})]
    for method, target, body in requests:
        reply = api.client.request(method, target, json=body, headers=bob)
        assert reply.status_code == 404, (method, target, reply.text)
        assert f"instance {instance['id']} not found" in reply.json()["error"]["message"]
    assert api.client.get(INSTANCES, headers=bob).json()["items"] == []
    assert get(api, admin_headers, instance["id"])["job_id"] is None


def test_busy_instance_is_409_naming_its_job(api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    accepted = launch("busy")
    [instance], [job] = accepted["instances"], accepted["jobs"]
    url = f"{INSTANCES}/{instance['id']}"
    for method, target, body in [("post", f"{url}/start", None), ("post", f"{url}/stop", {"force": True}),
                                 ("post", f"{url}/reboot", None), ("delete", url, None),
                                 ("post", f"{url}/resize", {"flavor": "small"}),
                                 ("post", f"{url}/rebuild", {"image": "img"})]:
        reply = api.client.request(method, target, json=body, headers=admin_headers)
        assert reply.status_code == 409, (target, reply.text)
        assert job["id"] in reply.json()["error"]["message"]
    assert jobs_of(api, admin_headers, instance["id"]) == ["create"]


def test_concurrent_actions_start_one_job(api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    [instance] = idle(api, launch)
    start = threading.Barrier(8)
    codes: list[int] = []

    def act(n: int) -> None:
        url, body = (f"{INSTANCES}/{instance['id']}/stop", None) if n % 2 else (
            f"{INSTANCES}/actions", {"action": "stop", "ids": [instance["id"]]})
        start.wait()
        codes.append(api.client.post(url, json=body, headers=admin_headers).status_code)

    threads = [threading.Thread(target=act, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(codes) == [202] + [409] * 7  # one job at a time per instance, even when racing
    assert jobs_of(api, admin_headers, instance["id"]) == ["stop", "create"]


def test_power_actions_once_idle(api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    [instance] = idle(api, launch)
    url = f"{INSTANCES}/{instance['id']}"
    assert get(api, admin_headers, instance["id"])["status"] == "running"
    for action, body, settled in [("stop", {"force": True}, "stopped"), ("start", None, "running"),
                                  ("reboot", {}, "running"), ("stop", None, "stopped")]:
        reply = api.client.post(f"{url}/{action}", json=body, headers=admin_headers)
        assert reply.status_code == 202, (action, reply.text)
        job = reply.json()
        assert (job["action"], job["state"], job["instance_id"]) == (action, "pending", instance["id"])
        assert get(api, admin_headers, instance["id"])["job_id"] == job["id"]
        settle(api, job["id"])
        assert get(api, admin_headers, instance["id"])["status"] == settled
    assert jobs_of(api, admin_headers, instance["id"]) == ["stop", "reboot", "start", "stop", "create"]


def test_resize_needs_a_stopped_instance_and_a_known_flavor(api: Api, admin_headers: dict[str, str],
                                                            launch: Launcher, make_flavor: FlavorMaker) -> None:
    [instance] = idle(api, launch)
    big = make_flavor("big", vcpus=4, memory_mib=4096, disk_gib=40)
    url = f"{INSTANCES}/{instance['id']}"
    reply = api.client.post(f"{url}/resize", json={"flavor": "big"}, headers=admin_headers)
    assert reply.status_code == 409 and "stop it first" in reply.json()["error"]["message"]
    settle(api, api.client.post(f"{url}/stop", headers=admin_headers).json()["id"])
    reply = api.client.post(f"{url}/resize", json={"flavor": "huge"}, headers=admin_headers)
    assert reply.status_code == 404 and "flavor 'huge'" in reply.json()["error"]["message"]
    reply = api.client.post(f"{url}/resize", json={"flavor": big["id"]}, headers=admin_headers)
    assert reply.status_code == 202 and reply.json()["action"] == "resize"
    settle(api, reply.json()["id"])
    resized = get(api, admin_headers, instance["id"])
    assert (resized["vcpus"], resized["memory_mib"], resized["disk_gib"], resized["flavor_id"], resized["status"]) == (
        4, 4096, 40, big["id"], "stopped")


def test_an_instance_never_placed_cannot_be_resized(api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    accepted = launch("vm")
    [instance], [job] = accepted["instances"], accepted["jobs"]
    settle(api, job["id"], "failed", "no capacity: no enabled, up hypervisor has room for 1 vCPU")
    failed = get(api, admin_headers, instance["id"])
    assert (failed["status"], failed["hypervisor_id"]) == ("error", None) and "no capacity" in failed["status_reason"]
    reply = api.client.post(f"{INSTANCES}/{instance['id']}/resize", json={"flavor": "small"}, headers=admin_headers)
    assert reply.status_code == 409 and "never placed" in reply.json()["error"]["message"], reply.text
    assert jobs_of(api, admin_headers, instance["id"]) == ["create"]
    assert api.client.delete(f"{INSTANCES}/{instance['id']}", headers=admin_headers).status_code == 202


def test_rebuild_needs_an_active_image(api: Api, admin_headers: dict[str, str], launch: Launcher,
                                       make_image: ImageMaker) -> None:
    [instance] = idle(api, launch)
    make_image("empty", upload=False)
    other = make_image("other")
    url = f"{INSTANCES}/{instance['id']}/rebuild"
    reply = api.client.post(url, json={"image": "empty"}, headers=admin_headers)
    assert reply.status_code == 409 and "queued" in reply.json()["error"]["message"]
    assert api.client.post(url, json={"image": 999999}, headers=admin_headers).status_code == 404
    make_image("arm", arch="aarch64")
    reply = api.client.post(url, json={"image": "arm"}, headers=admin_headers)
    assert reply.status_code == 400 and "aarch64" in reply.json()["error"]["message"]
    reply = api.client.post(url, json={"image": "other"}, headers=admin_headers)
    assert reply.status_code == 202 and reply.json()["action"] == "rebuild"
    settle(api, reply.json()["id"])
    assert get(api, admin_headers, instance["id"])["image_id"] == other["id"]


def test_batch_actions_are_all_or_none(api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    a, b, c = (i["id"] for i in idle(api, launch, "vm", 3))
    busy = api.client.post(f"{INSTANCES}/{c}/reboot", headers=admin_headers).json()
    for ids, status, shown in [([a, b, 999999], 404, "instance 999999 not found"),
                               ([a, b, c], 409, busy["id"])]:
        reply = api.client.post(f"{INSTANCES}/actions", json={"action": "stop", "ids": ids}, headers=admin_headers)
        assert reply.status_code == status and shown in reply.json()["error"]["message"], reply.text
        for instance_id in (a, b):
            assert get(api, admin_headers, instance_id)["job_id"] is None
            assert jobs_of(api, admin_headers, instance_id) == ["create"]
    reply = api.client.post(f"{INSTANCES}/actions", json={"action": "stop", "ids": [b, a, b], "force": True},
                            headers=admin_headers)
    assert reply.status_code == 202, reply.text
    body = reply.json()
    assert sorted(i["id"] for i in body["instances"]) == [a, b]
    assert {(j["action"], j["state"], j["batch"]) for j in body["jobs"]} == {("stop", "pending", body["batch"])}
    assert {get(api, admin_headers, i)["job_id"] for i in (a, b)} == {j["id"] for j in body["jobs"]}
    reply = api.client.post(f"{INSTANCES}/actions", json={"action": "delete", "ids": []}, headers=admin_headers)
    assert reply.status_code == 422


def test_an_image_in_use_cannot_be_deleted(api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    accepted = launch("web", count=5)
    image_id = accepted["instances"][0]["image_id"]
    reply = api.client.delete(f"/api/v1/images/{image_id}", headers=admin_headers)
    assert reply.status_code == 409, reply.text
    message = reply.json()["error"]["message"]
    assert f"image {image_id} (img) is used by 5 instance(s) (web-1, web-2, web-3, ...)" in message
    assert api.client.get(f"/api/v1/images/{image_id}", headers=admin_headers).status_code == 200
    # Once every instance is deleted the image may go.
    for job in accepted["jobs"]:
        settle(api, job["id"])
    ids = [i["id"] for i in accepted["instances"]]
    batch = api.client.post("/api/v1/instances/actions", json={"action": "delete", "ids": ids}, headers=admin_headers)
    for job in batch.json()["jobs"]:
        settle(api, job["id"])
    assert api.client.delete(f"/api/v1/images/{image_id}", headers=admin_headers).status_code == 204
