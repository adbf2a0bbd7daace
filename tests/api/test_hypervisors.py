"""Hypervisors: only the operator organisation sees them; capacities under the overcommit ratios."""

from __future__ import annotations

from cloudland_api.models import Role
from tests.api.conftest import Api, add_hypervisor

HYPERVISORS = "/api/v1/hypervisors"


def test_only_the_operator_organisation_sees_them(api: Api, admin_headers: dict[str, str]) -> None:
    add_hypervisor(api, 0)
    for role in (Role.admin, Role.member, Role.reader):
        tenant = api.add_user(f"t-{role.value}", "tenant", role)
        for method, url, body in [("get", HYPERVISORS, None), ("get", f"{HYPERVISORS}/0", None),
                                  ("get", f"{HYPERVISORS}/99", None),  # 403 before 404: no probing for ids
                                  ("patch", f"{HYPERVISORS}/0", {"enabled": False})]:
            reply = api.client.request(method, url, json=body, headers=tenant)
            assert reply.status_code == 403, (role, method, url, reply.text)
            assert "operator" in reply.json()["error"]["message"]
    assert api.client.get(f"{HYPERVISORS}/0", headers=admin_headers).json()["enabled"] is True


def test_list_and_get_with_capacities(api: Api, admin_headers: dict[str, str]) -> None:
    add_hypervisor(api, 3, cpus=6, memory_mib=3000, cpu_ratio=1.5, memory_ratio=1.25, free_memory_mib=1000,
                   vcpus_claimed=2, memory_claimed_mib=512, domains=2, running_domains=1)
    add_hypervisor(api, 1, cpus=100, memory_mib=1023, cpu_ratio=0.29, memory_ratio=0.3, arch="aarch64", state="down")
    listing = api.client.get(HYPERVISORS, headers=admin_headers).json()
    assert (listing["limit"], listing["next_after"]) == (100, None)
    low, high = listing["items"]
    assert (low["id"], high["id"]) == (1, 3)
    # 100 * 0.29 is 28.999999999999996 in floating point: still 29 vCPUs. floor(1023 * 0.3) = 306.
    assert (low["vcpus_capacity"], low["memory_capacity_mib"], low["arch"], low["state"]) == (29, 306, "aarch64",
                                                                                               "down")
    assert (high["vcpus_capacity"], high["memory_capacity_mib"]) == (9, 3750)
    assert {k: high[k] for k in ("hostname", "cpus", "memory_mib", "free_memory_mib", "vcpus_claimed",
                                 "memory_claimed_mib", "domains", "running_domains", "enabled")} == {
        "hostname": "hv3", "cpus": 6, "memory_mib": 3000, "free_memory_mib": 1000, "vcpus_claimed": 2,
        "memory_claimed_mib": 512, "domains": 2, "running_domains": 1, "enabled": True}
    assert api.client.get(f"{HYPERVISORS}/3", headers=admin_headers).json() == high
    first = api.client.get(HYPERVISORS, params={"limit": 1}, headers=admin_headers).json()
    page = api.client.get(HYPERVISORS, params={"limit": 1, "after": first["next_after"]}, headers=admin_headers).json()
    assert [h["id"] for h in page["items"]] == [3] and page["next_after"] is None


def test_patch_settings(api: Api, admin_headers: dict[str, str]) -> None:
    add_hypervisor(api, 5, cpus=8, memory_mib=8192)
    url = f"{HYPERVISORS}/5"
    reply = api.client.patch(url, json={"enabled": False}, headers=admin_headers)
    assert reply.status_code == 200 and reply.json()["enabled"] is False
    assert reply.json()["cpu_ratio"] == 4.0 and reply.json()["vcpus_capacity"] == 32  # untouched
    reply = api.client.patch(url, json={"cpu_ratio": 2, "memory_ratio": 1.5}, headers=admin_headers)
    assert reply.status_code == 200, reply.text
    updated = reply.json()
    assert (updated["cpu_ratio"], updated["memory_ratio"], updated["enabled"]) == (2.0, 1.5, False)
    assert (updated["vcpus_capacity"], updated["memory_capacity_mib"]) == (16, 12288)
    assert api.client.get(url, headers=admin_headers).json() == updated
    assert api.client.patch(url, json={}, headers=admin_headers).json() == updated
    assert api.client.patch(url, json={"enabled": True}, headers=admin_headers).json()["enabled"] is True


def test_patch_rejects_bad_values(api: Api, admin_headers: dict[str, str]) -> None:
    add_hypervisor(api, 5)
    for body in ({"cpu_ratio": 0}, {"cpu_ratio": -1.5}, {"memory_ratio": 0.0}, {"memory_ratio": -2},
                 {"cpu_ratio": 65}, {"memory_ratio": 17}, {"enabled": "no"}, {"cpus": 64}, {"cpu_ratio": "2"}):
        reply = api.client.patch(f"{HYPERVISORS}/5", json=body, headers=admin_headers)
        assert reply.status_code == 422, (body, reply.text)
    hypervisor = api.client.get(f"{HYPERVISORS}/5", headers=admin_headers).json()
    assert (hypervisor["cpu_ratio"], hypervisor["memory_ratio"], hypervisor["cpus"]) == (4.0, 1.0, 8)


def test_operator_members_read_but_only_admins_patch(api: Api) -> None:
    add_hypervisor(api, 2)
    for role in (Role.member, Role.reader):
        headers = api.add_user(f"op-{role.value}", "admin", role)
        assert api.client.get(f"{HYPERVISORS}/2", headers=headers).status_code == 200
        reply = api.client.patch(f"{HYPERVISORS}/2", json={"enabled": False}, headers=headers)
        assert reply.status_code == 403 and reply.json()["error"]["code"] == "forbidden", reply.text
        # The role decides first, for unknown ids too (api/policy.py): no row is read for a refusal.
        assert api.client.patch(f"{HYPERVISORS}/9", json={"enabled": False}, headers=headers).status_code == 403


def test_unknown_hypervisor_is_404(api: Api, admin_headers: dict[str, str]) -> None:
    for method, body in (("get", None), ("patch", {"enabled": False})):
        reply = api.client.request(method, f"{HYPERVISORS}/42", json=body, headers=admin_headers)
        assert reply.status_code == 404 and "hypervisor 42 not found" in reply.json()["error"]["message"]
    assert api.client.get(f"{HYPERVISORS}/-1", headers=admin_headers).status_code == 422
    assert api.client.get(HYPERVISORS, headers=admin_headers).json() == {"items": [], "limit": 100,
                                                                         "next_after": None}
