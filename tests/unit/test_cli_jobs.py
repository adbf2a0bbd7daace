"""``cloudland job list`` and ``job show``: every job names its kind and its subject.

The API is a stub that answers the CLI's GETs with canned bodies (JobPublic's shape), so
nothing runs but the CLI's own code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from typer.testing import CliRunner

from cloudland_cli import cloud, main

STAMP = "2025-01-01T00:00:00Z"


def job(job_id: str, kind: str, action: str, subject_type: str, subject_id: int, **rest: Any) -> dict[str, Any]:
    return {"id": job_id, "batch": "b-1", "kind": kind, "action": action, "subject_type": subject_type,
            "subject_id": subject_id, "instance_id": subject_id if subject_type == "instance" else None,
            "hypervisor_id": rest.get("hypervisor_id"), "targets": rest.get("targets"), "state": "succeeded",
            "reason": None, "attempts": 1, "created_at": STAMP, "updated_at": STAMP, "finished_at": STAMP}


VM_JOB = job("j-vm", "vm", "create", "instance", 12, hypervisor_id=3, targets={"hypervisor": 3})
EVICT_JOB = job("j-img", "image", "evict", "image", 7, targets={"all": True})


class StubApi:
    """Answers GET /jobs and GET /jobs/{id} with VM_JOB and EVICT_JOB."""

    def get(self, path: str, **params: Any) -> Any:
        jobs = {j["id"]: j for j in (VM_JOB, EVICT_JOB)}
        if path == "/jobs":
            return {"items": list(jobs.values()), "limit": params.get("limit"), "next_after": None, "counts": None}
        return jobs[path.removeprefix("/jobs/")]


@pytest.fixture(autouse=True)
def stub_api(monkeypatch: pytest.MonkeyPatch) -> None:
    @contextmanager
    def connect(require_token: bool = True) -> Iterator[StubApi]:
        yield StubApi()

    monkeypatch.setattr(cloud, "connect", connect)


def run(*args: str) -> Any:
    result = CliRunner(env={"COLUMNS": "200"}).invoke(main.app, list(args))
    assert result.exit_code == 0, result.output
    return result


def cells(line: str) -> list[str]:
    """The cells of one row of a Rich table (header rows are drawn with heavier bars)."""
    return [cell.strip() for cell in re.split("[│┃]", line)[1:-1]]


def test_job_list_shows_each_jobs_kind_and_subject() -> None:
    rows = [cells(line) for line in run("job", "list").stdout.splitlines() if cells(line)]
    assert rows[0][:6] == ["id", "batch", "kind", "action", "subject", "hypervisor"]
    by_id = {row[0]: row for row in rows[1:]}
    assert by_id["j-vm"][2:6] == ["vm", "create", "instance 12", "3"]
    assert by_id["j-img"][2:6] == ["image", "evict", "image 7", "-"]  # a broadcast: no one hypervisor


@pytest.mark.parametrize(("job_id", "kind", "subject"), [("j-vm", "vm", "instance 12"), ("j-img", "image", "image 7")])
def test_job_show_names_the_kind_and_the_subject(job_id: str, kind: str, subject: str) -> None:
    fields = dict(line.strip().split(None, 1) for line in run("job", "show", job_id).stdout.splitlines())
    assert fields["kind"] == kind and fields["subject"] == subject
    assert "instance_id" not in fields and "subject_type" not in fields  # one line says it all


def test_job_show_json_is_the_apis_job_unchanged() -> None:
    assert json.loads(run("job", "show", "j-img", "--json").stdout) == EVICT_JOB
