"""The attachments' reconciler (api/reconcile/volume.py) against a recording fake root: seed
attachments and the disks hypervisors report, run one pass (sync, then the engine's pass),
compare what was sent, and what was only reported."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from cloudland_api.jobs import Engine
from cloudland_api.models import Hypervisor, Instance, Volume, VolumeAttachment, utcnow
from cloudland_api.reconcile.vm import Domain
from cloudland_api.reconcile.volume import VolumeVerdict, sync_hypervisors
from cloudland_proto.v1 import storage_pb2 as spb
from tests.fakeroot import FakeRoot

Sessions = sessionmaker[Session]
OLD = timedelta(seconds=60)


@pytest.fixture
def seeded(sessions: Sessions, org: int) -> dict[str, int]:
    """Hypervisor 1, a running instance on it, and two idle volumes there (ids)."""
    with sessions() as session:
        session.add(Hypervisor(id=1, hostname="hv1", cpus=8, memory_mib=8192))
        vm = Instance(org_id=org, name="web", uuid=str(uuid.uuid4()), vcpus=1, memory_mib=256, disk_gib=1,
                      hypervisor_id=1, status="running")
        a = Volume(org_id=org, name="a", size_gib=1, type="local", backend="local", hypervisor_id=1, status="available")
        b = Volume(org_id=org, name="b", size_gib=1, type="local", backend="local", hypervisor_id=1, status="available")
        session.add_all([vm, a, b])
        session.flush()
        for row in (vm, a, b):
            row.updated_at = utcnow() - OLD
        session.commit()
        return {"vm": vm.id, "a": a.id, "b": b.id}


def attached(sessions: Sessions, org: int, seeded: dict[str, int], volume: str, device: str) -> int:
    with sessions() as session:
        row = VolumeAttachment(org_id=org, volume_id=seeded[volume], instance_id=seeded["vm"], device=device,
                               status="attached")
        session.add(row)
        session.commit()
        return row.id


def reported(sessions: Sessions, seeded: dict[str, int], *disks: tuple[str, int, int]) -> dict[int, dict[str, Domain]]:
    with sessions() as session:
        vm = session.get(Instance, seeded["vm"])
        assert vm is not None
        return {1: {vm.uuid: Domain(vm.domain_name, vm.uuid, "running", vm.id, (("vda", 0, 0), *disks))}}


def one_pass(sessions: Sessions, observed: dict[int, dict[str, Domain]]) -> tuple[FakeRoot, VolumeVerdict]:
    fake = FakeRoot([1])
    with sessions() as session:
        verdict = sync_hypervisors(session, observed)
        session.commit()
        ids = [job.id for job in verdict.jobs]
    Engine(sessions, fake).run_once(ids)
    return fake, verdict


def test_agreeing_views_make_no_job(sessions: Sessions, org: int, seeded: dict[str, int]) -> None:
    att = attached(sessions, org, seeded, "a", "vdb")
    fake, verdict = one_pass(sessions, reported(sessions, seeded, ("vdb", seeded["a"], att)))
    assert fake.commands == [] and verdict.foreign == [] and verdict.again == set()


def test_a_boot_volume_is_never_hot_plugged_again_and_its_disk_is_not_foreign(
        sessions: Sessions, org: int, seeded: dict[str, int]) -> None:
    """A domain without its boot volume is the VM reconciler's to define again (vol.attach never
    takes vda); with it, the root disk carries its attachment id and is judged as any."""
    att = attached(sessions, org, seeded, "a", "vda")
    with sessions() as session:
        vm = session.get(Instance, seeded["vm"])
        assert vm is not None
        without_root = {1: {vm.uuid: Domain(vm.domain_name, vm.uuid, "running", vm.id, ())}}
        with_root = {1: {vm.uuid: Domain(vm.domain_name, vm.uuid, "running", vm.id, (("vda", seeded["a"], att),))}}
    fake, verdict = one_pass(sessions, without_root)
    assert fake.commands == [] and verdict.foreign == []
    fake, verdict = one_pass(sessions, with_root)
    assert fake.commands == [] and verdict.foreign == [] and verdict.again == set()


def test_a_missing_disk_is_attached_again_under_its_attachment_id(
        sessions: Sessions, org: int, seeded: dict[str, int]) -> None:
    att = attached(sessions, org, seeded, "a", "vdb")
    fake, _ = one_pass(sessions, reported(sessions, seeded))  # the domain was recovered without it
    [sent] = fake.commands
    assert sent.operation == "vol.attach" and sent.targets == 1
    assert (sent.request.attachment_id, sent.request.device, sent.request.volume) == (
        att, "vdb", spb.VolumeRef(id=seeded["a"], backend="local"))
    with sessions() as session:
        row = session.get(VolumeAttachment, att)
        assert row is not None and row.status == "attached"


def test_a_disk_of_an_attachment_the_database_does_not_have_is_detached(
        sessions: Sessions, org: int, seeded: dict[str, int]) -> None:
    fake, _ = one_pass(sessions, reported(sessions, seeded, ("vdc", seeded["b"], 41)))
    [sent] = fake.commands
    assert (sent.operation, sent.request.attachment_id, sent.request.volume.id) == ("vol.detach", 41, seeded["b"])


def test_a_disk_attached_outside_cloudland_is_reported_never_adopted(
        sessions: Sessions, org: int, seeded: dict[str, int]) -> None:
    fake, verdict = one_pass(sessions, reported(sessions, seeded, ("vdd", 0, 0), ("vde", 999, 7)))
    assert fake.commands == []
    with sessions() as session:
        vm = session.get(Instance, seeded["vm"])
        assert vm is not None
    assert sorted(verdict.foreign) == [(1, vm.domain_name, "vdd"), (1, vm.domain_name, "vde")]


def test_busy_or_fresh_volumes_wait_for_a_later_pass(sessions: Sessions, org: int, seeded: dict[str, int]) -> None:
    attached(sessions, org, seeded, "a", "vdb")
    with sessions() as session:
        volume = session.get(Volume, seeded["a"])
        assert volume is not None
        volume.job_id = "someone"
        session.commit()
    fake, verdict = one_pass(sessions, reported(sessions, seeded))
    assert fake.commands == [] and verdict.again == {1}
