"""Volume jobs against the recording fake root (tests/fakeroot.py), on a real database (issue 13):
which operation each action sends, to which hypervisor, with which request, and what the answer
does to the volume, its snapshot and its attachment."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy.orm import Session, sessionmaker

from cloudland.client import new_job_id
from cloudland_api.jobs import Engine, Settings
from cloudland_api.jobs.guest import GuestSource
from cloudland_api.models import (
    INSTANCE, VOLUME, Hypervisor, Image, Instance, Job, JobState, Volume, VolumeAttachment, VolumeSnapshot,
)
from cloudland_proto.v1 import compute_pb2 as cpb
from cloudland_proto.v1 import storage_pb2 as spb
from tests.api.test_job_engine import job as job_row
from tests.fakeroot import FakeRoot

Sessions = sessionmaker[Session]
GIB = 1 << 30


@pytest.fixture
def fake() -> FakeRoot:
    return FakeRoot(hypervisors=(1, 2))


@pytest.fixture
def engine(sessions: Sessions, fake: FakeRoot) -> Engine:
    return Engine(sessions, fake, backoff=lambda tries: 0.0)


def seed(sessions: Sessions, org: int, backend: str = "local") -> tuple[int, int]:
    """Hypervisors 1 and 2, an instance on 2, an available volume (local ones on 2): their ids."""
    with sessions() as session:
        session.add_all(Hypervisor(id=hv, hostname=f"hv{hv}", cpus=8, memory_mib=8192) for hv in (1, 2))
        vm = Instance(org_id=org, name="web", uuid=str(uuid.uuid4()), vcpus=1, memory_mib=512, disk_gib=1,
                      hypervisor_id=2, status="running")
        volume = Volume(org_id=org, name="data", size_gib=2, type=backend, backend=backend,
                        hypervisor_id=2 if backend == "local" else None, status="available")
        session.add_all([vm, volume])
        session.commit()
        return vm.id, volume.id


def job(sessions: Sessions, org: int, volume_id: int, action: str, **args: object) -> str:
    with sessions() as session:
        row = Job(id=new_job_id(), org_id=org, batch=new_job_id(), kind="volume", action=action, subject_type=VOLUME,
                  subject_id=volume_id, args=args, state=JobState.pending, attempts=0)
        session.add(row)
        volume = session.get(Volume, volume_id)
        assert volume is not None
        volume.job_id = row.id
        session.commit()
        return row.id


def state(sessions: Sessions, job_id: str) -> JobState:
    return job_row(sessions, job_id).state


def attaching(sessions: Sessions, org: int, vm: int, vol: int) -> int:
    """An attachment of ``vol`` to ``vm`` as vdb, being attached: its id."""
    with sessions() as session:
        attachment = VolumeAttachment(org_id=org, volume_id=vol, instance_id=vm, device="vdb", status="attaching")
        session.add(attachment)
        session.commit()
        return attachment.id


def test_each_action_sends_its_operation_where_the_volume_or_its_instance_is(
        sessions: Sessions, org: int, fake: FakeRoot, engine: Engine) -> None:
    vm, vol = seed(sessions, org)
    attachment_id = attaching(sessions, org, vm, vol)
    with sessions() as session:
        snapshot = VolumeSnapshot(org_id=org, volume_id=vol, name="s", size_gib=2)
        session.add(snapshot)
        session.commit()
        snapshot_id = snapshot.id
        domain = session.get(Instance, vm).domain_name  # type: ignore[union-attr]
    ref = spb.VolumeRef(id=vol, backend="local")
    expected = [
        ("create", {"size_gib": 2}, "vol.create", spb.VolumeCreateRequest(volume=ref, size_bytes=2 * GIB)),
        ("attach", {"attachment_id": attachment_id, "instance_id": vm, "device": "vdb"}, "vol.attach",
         spb.VolumeAttachRequest(volume=ref, domain=domain, device="vdb", attachment_id=attachment_id)),
        ("extend", {"size_gib": 3, "instance_id": vm}, "vol.extend",
         spb.VolumeExtendRequest(volume=ref, size_bytes=3 * GIB, domain=domain)),
        ("snapshot", {"snapshot_id": snapshot_id}, "vol.snapshot",
         spb.VolumeSnapshotRequest(volume=ref, snapshot_id=snapshot_id)),
        ("detach", {"attachment_id": attachment_id, "instance_id": vm, "device": "vdb"}, "vol.detach",
         spb.VolumeDetachRequest(volume=ref, domain=domain, attachment_id=attachment_id)),
        ("snapshot_delete", {"snapshot_id": snapshot_id}, "vol.snapshot_delete",
         spb.VolumeSnapshotDeleteRequest(volume=ref, snapshot_id=snapshot_id)),
        ("delete", {}, "vol.delete", spb.VolumeDeleteRequest(volume=ref)),
    ]
    for action, args, operation, request in expected:
        job_id = job(sessions, org, vol, action, **args)
        engine.run_once([job_id])
        [sent] = fake.commands[-1:]
        assert (sent.operation, sent.targets, sent.request) == (operation, 2, request), action
        assert state(sessions, job_id) == JobState.succeeded, action
    with sessions() as session:
        assert session.get(Volume, vol) is None  # the delete's success removed the row
        assert session.get(VolumeSnapshot, snapshot_id) is None
        assert session.get(VolumeAttachment, attachment_id) is None


def test_a_shared_volume_goes_to_any_hypervisor_up_and_a_clone_names_its_snapshot(
        sessions: Sessions, org: int, fake: FakeRoot, engine: Engine) -> None:
    _vm, vol = seed(sessions, org, backend="ceph")
    with sessions() as session:
        session.get(Hypervisor, 1).state = "down"  # type: ignore[union-attr]
        session.commit()
    job_id = job(sessions, org, vol, "create", size_gib=4, snapshot_id=9, source_volume_id=3)
    engine.run_once([job_id])
    [sent] = fake.commands
    assert (sent.operation, sent.targets) == ("vol.clone", 2) and sent.request == spb.VolumeCloneRequest(
        volume=spb.VolumeRef(id=vol, backend="ceph"), source=spb.VolumeRef(id=3, backend="ceph"), snapshot_id=9,
        size_bytes=4 * GIB)


def test_failures_end_terminal_and_leave_nothing_half_done(
        sessions: Sessions, org: int, fake: FakeRoot, engine: Engine) -> None:
    vm, vol = seed(sessions, org)
    attachment_id = attaching(sessions, org, vm, vol)
    fake.fail_next("vol.attach", "failed", "vol.attach: domain cl-x not found (hypervisor 2, job j)")
    job_id = job(sessions, org, vol, "attach", attachment_id=attachment_id, instance_id=vm, device="vdb")
    engine.run_once([job_id])
    assert state(sessions, job_id) == JobState.failed
    with sessions() as session:
        assert session.get(VolumeAttachment, attachment_id) is None  # no "attaching" left behind
        volume = session.get(Volume, vol)
        assert volume is not None and volume.job_id is None and "domain cl-x not found" in (volume.status_reason or "")
    # A local volume whose hypervisor is gone: the job fails at once, naming it, without a send.
    with sessions() as session:
        session.get(Hypervisor, 2).state = "gone"  # type: ignore[union-attr]
        session.commit()
    sent_before = len(fake.commands)
    job_id = job(sessions, org, vol, "extend", size_gib=5)
    engine.run_once([job_id])
    assert len(fake.commands) == sent_before and state(sessions, job_id) == JobState.failed
    with sessions() as session:
        volume = session.get(Volume, vol)
        assert volume is not None and "hypervisor 2 is gone" in (volume.status_reason or "") and volume.size_gib == 2


def test_a_volume_from_an_image_carries_where_to_fetch_it_with_a_token(
        sessions: Sessions, org: int, fake: FakeRoot) -> None:
    _vm, vol = seed(sessions, org)
    with sessions() as session:
        image = Image(org_id=org, name="img", disk_format="qcow2", status="active", sha256="ab" * 32, size_bytes=512)
        session.add(image)
        session.commit()
        image_id = image.id
    # Without an image URL for hypervisors, the job fails at once, saying so.
    failed = job(sessions, org, vol, "create", size_gib=1, image_id=image_id)
    Engine(sessions, fake, backoff=lambda tries: 0.0).run_once([failed])
    assert fake.commands == [] and state(sessions, failed) == JobState.failed
    source = GuestSource("http://api.example:8080/api/v1/images", b"k" * 32, 3600)
    engine = Engine(sessions, fake, Settings(guest_source=source), backoff=lambda tries: 0.0)
    sent_id = job(sessions, org, vol, "create", size_gib=1, image_id=image_id)
    engine.run_once([sent_id])
    [sent] = fake.commands
    image_source = sent.request.image
    assert (sent.operation, image_source.image_id, image_source.sha256, image_source.disk_format) == (
        "vol.create", image_id, "ab" * 32, "qcow2")
    assert image_source.url == f"http://api.example:8080/api/v1/images/{image_id}/download" and image_source.token


def test_a_vm_booting_from_a_local_volume_is_placed_beside_it_and_carries_it(
        sessions: Sessions, org: int, fake: FakeRoot, engine: Engine) -> None:
    """A create with a boot volume: claimed on the volume's hypervisor (the job's ``host``), not
    scheduled; vm.create carries the volume and its attachment; the attachment is then attached.
    A host without room fails the job, naming it, and sends nothing."""
    _vm, vol = seed(sessions, org)  # the local volume lives on hypervisor 2
    with sessions() as session:
        for hv in (1, 2):
            session.get(Hypervisor, hv).free_memory_mib = 8192  # type: ignore[union-attr]
        session.commit()

    def boot_job(name: str, vcpus: int, volume_id: int | None) -> tuple[str, int, int | None]:
        with sessions() as session:
            instance = Instance(org_id=org, name=name, uuid=str(uuid.uuid4()), vcpus=vcpus, memory_mib=512,
                                disk_gib=2, status="building")
            session.add(instance)
            session.flush()
            attachment = None
            if volume_id is not None:
                attachment = VolumeAttachment(org_id=org, volume_id=volume_id, instance_id=instance.id, device="vda",
                                              status="attaching")
                session.add(attachment)
                session.flush()
            row = Job(id=new_job_id(), org_id=org, batch=new_job_id(), kind="vm", action="create",
                      subject_type=INSTANCE, subject_id=instance.id, args={"host": 2}, state=JobState.pending,
                      attempts=0)
            session.add(row)
            instance.job_id = row.id
            session.commit()
            return row.id, instance.id, attachment.id if attachment else None

    job_id, instance_id, attachment_id = boot_job("app", 1, vol)
    engine.run_once([job_id])
    [sent] = fake.commands
    assert (sent.operation, sent.targets) == ("vm.create", 2)
    assert sent.request.boot_volume == cpb.BootVolume(volume=spb.VolumeRef(id=vol, backend="local"),
                                                      attachment_id=attachment_id)
    assert state(sessions, job_id) == JobState.succeeded
    with sessions() as session:
        instance = session.get(Instance, instance_id)
        assert instance is not None and (instance.hypervisor_id, instance.status) == (2, "running")
        assert session.get(VolumeAttachment, attachment_id).status == "attached"  # type: ignore[union-attr]
        assert session.get(Hypervisor, 2).vcpus_claimed == 1  # type: ignore[union-attr]
        assert session.get(Hypervisor, 1).vcpus_claimed == 0  # type: ignore[union-attr]

    too_big, _, _ = boot_job("huge", 1000, None)
    engine.run_once([too_big])
    assert fake.commands == [sent]
    failed = job_row(sessions, too_big)
    assert failed.state == JobState.failed and "no capacity on hypervisor 2" in (failed.reason or "")
