"""Answers written from rows (api/rowjson.py) are the bytes Pydantic would have written."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest
from pydantic import BaseModel, Field, field_validator

from cloudland_api import rowjson
from cloudland_api.models import JobState
from cloudland_api.schemas import FlavorList, FlavorPublic, InstanceList, InstancePublic, JobList, JobPublic
from tests.api.conftest import Api, Launcher, settle

WHEN = datetime(2026, 12, 7, 21, 55, 24, 123456, tzinfo=UTC)
ON_THE_SECOND = datetime(2026, 12, 7, 21, 55, 24, tzinfo=UTC)
INSTANCE = {"id": 7, "name": "vm-7", "uuid": "3f0e6f2c-4b8b-4a0e-9b1b-1234567890ab", "status": "running",
            "status_reason": None, "flavor_id": 1, "image_id": None, "ssh_key_id": 3, "vcpus": 2,
            "memory_mib": 512, "disk_gib": 10, "arch": "x86_64", "hypervisor_id": 0, "boot_volume_id": None,
            "job_id": "ab" * 16, "created_at": WHEN, "updated_at": ON_THE_SECOND}
JOB = {"id": "cd" * 16, "batch": "ef" * 16, "kind": "vm", "action": "create", "subject_type": "instance",
       "subject_id": 7, "instance_id": 7, "hypervisor_id": None,
       "targets": {"hypervisors": [1, 2], "note": "é \u2028 \"q\"", "ratio": 1.5, "none": None},
       "state": JobState.failed, "reason": "hypervisor 1: no disk", "attempts": 2, "created_at": WHEN,
       "updated_at": WHEN, "finished_at": None}


def pydantic_bytes(schema: type[BaseModel], content: dict[str, Any]) -> bytes:
    return schema.model_validate(content).model_dump_json().encode()


@pytest.mark.parametrize(("schema", "row"), [
    (InstancePublic, INSTANCE), (InstancePublic, {k: v for k, v in INSTANCE.items() if k != "boot_volume_id"}),
    (JobPublic, JOB), (JobPublic, JOB | {"state": JobState.pending, "targets": None, "finished_at": WHEN}),
    (FlavorPublic, {"id": 1, "name": "tiny", "vcpus": 1, "memory_mib": 64, "disk_gib": 1, "created_at": WHEN,
                    "org_id": 5}),  # a column the schema does not name is left out
])
def test_one_row_is_pydantics_bytes(schema: type[BaseModel], row: dict[str, Any]) -> None:
    reply = rowjson.one(schema, row)
    assert reply.body == pydantic_bytes(schema, row)
    assert reply.headers["content-type"] == "application/json"


def test_a_page_is_pydantics_bytes_in_its_field_order() -> None:
    rows = [INSTANCE | {"id": n} for n in range(3)]
    reply = rowjson.page(InstanceList, rows, limit=3, next_after="WzJd")
    assert reply.body == pydantic_bytes(InstanceList, {"items": rows, "limit": 3, "next_after": "WzJd"})
    assert reply.body.startswith(b'{"limit":3,"next_after":"WzJd","items":[{"id":0,')
    jobs = rowjson.page(JobList, [JOB], limit=1, next_after=None, counts={"pending": 0, "failed": 1})
    assert jobs.body == pydantic_bytes(JobList, {"items": [JOB], "limit": 1, "next_after": None,
                                                 "counts": {"pending": 0, "failed": 1}})
    assert rowjson.page(FlavorList, [], limit=50, next_after=None).body == b'{"limit":50,"next_after":null,"items":[]}'


def test_a_schema_pydantic_would_change_is_refused_naming_it() -> None:
    class Checked(BaseModel):
        name: str

        @field_validator("name")
        @classmethod
        def lower(cls, value: str) -> str:
            return value.lower()

    class Aliased(BaseModel):
        name: str = Field(serialization_alias="Name")

    class Typed(BaseModel):
        uuid: UUID

    for schema, says in ((Checked, "Checked has validators"), (Aliased, "Aliased.name has an alias"),
                         (Typed, "Typed.uuid: <class 'uuid.UUID'> is not a plain JSON type")):
        with pytest.raises(TypeError, match=says):
            rowjson.one(schema, {"name": "x", "uuid": "x"})


def test_a_row_without_a_required_field_fails_loudly() -> None:
    with pytest.raises(KeyError, match="created_at"):
        rowjson.one(FlavorPublic, {"id": 1, "name": "tiny", "vcpus": 1, "memory_mib": 64, "disk_gib": 1})


def test_the_hot_reads_answer_pydantics_bytes(api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    """Each route answered from rows, through the app, on both databases: what it sends is what
    its response model would have sent for the same content, with the same header."""
    accepted = launch("vm", count=3)
    settle(api, accepted["jobs"][0]["id"], "failed", "hypervisor 1: no disk")
    instance = accepted["instances"][1]["id"]
    for path, schema in ((f"/api/v1/instances/{instance}", InstancePublic), ("/api/v1/instances?limit=2", InstanceList),
                         ("/api/v1/flavors", FlavorList), ("/api/v1/jobs", JobList),
                         (f"/api/v1/jobs?batch={accepted['batch']}&limit=2", JobList)):
        reply = api.client.get(path, headers=admin_headers)
        assert reply.status_code == 200, (path, reply.text)
        assert reply.headers["content-type"] == "application/json", path
        assert reply.content == schema.model_validate_json(reply.content).model_dump_json().encode(), path
    assert api.client.get("/api/v1/instances/999999", headers=admin_headers).status_code == 404
