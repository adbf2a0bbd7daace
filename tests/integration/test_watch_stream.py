"""Observed state as a stream, through a real tree: a change on a hypervisor reaches the Watch
stream and the database promptly, well before the next heartbeat (5 s here)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from cloudland.client import RootClient
from cloudland_launcher.harness import wait_for
from cloudland_proto.v1 import compute_pb2 as cpb
from cloudland_proto.v1 import envelope_pb2 as pb
from cloudland_proto.v1 import root_pb2
from tests.integration.cloud import Cloud

pytestmark = pytest.mark.slow


def test_a_change_on_a_hypervisor_reaches_the_stream_and_the_database_promptly(make_tree: Any,
                                                                               tmp_path: Any) -> None:
    tree = make_tree(2, 1, 32, 5.0)  # heartbeats every 5 s: only the prompt path can be quick
    cloud = Cloud(tree, tmp_path / "api", f"sqlite:///{tmp_path / 'api' / 'cloudland.db'}", {})
    cloud.start_api()
    events: list[tuple[float, root_pb2.WatchEvent]] = []
    watcher = RootClient(tree.endpoint)
    try:
        cloud.bootstrap()
        cloud.wait_hypervisors(2)
        accepted = cloud.post("/instances", {"name": "w", "flavor": "small", "image": "tiny"})
        assert cloud.wait_batch(accepted["batch"], 1)["succeeded"] == 1
        [vm] = cloud.instances(name="w")
        hv = vm["hypervisor_id"]
        wait_for(lambda: cloud.get(f"/hypervisors/{hv}")["running_domains"] == 1, 10, "the VM counted")

        def read() -> None:
            for event in watcher.watch():
                events.append((time.monotonic(), event))

        threading.Thread(target=read, daemon=True).start()
        wait_for(lambda: events, 10, "the snapshot")
        snapshot = events[0][1]
        assert snapshot.snapshot and snapshot.ready and list(snapshot.reported) == [0, 1]
        before = {r.hypervisor: r for r in snapshot.reports}[hv]
        assert before.incarnation and before.generation >= 1
        assert [(v.uuid, v.instance_id) for v in before.vms] == [(vm["uuid"], vm["id"])]

        started = time.monotonic()
        [reply] = cloud.tree.client.run("vm.stop", hv, request=cpb.VmStopRequest(name=f"cl-{vm['uuid']}", force=True),
                                         timeout=30)
        assert reply.status == pb.OK, reply.error
        wait_for(lambda: cloud.get(f"/hypervisors/{hv}")["running_domains"] == 0, 3, "the database to see it")
        in_db = time.monotonic() - started
        change = next(e for at, e in events[1:] if any(r.hypervisor == hv for r in e.reports))
        after = next(r for r in change.reports if r.hypervisor == hv)
        assert (after.incarnation, after.generation) == (before.incarnation, before.generation + 1)
        assert [v.state for v in after.vms] == ["shutoff"]
        print(f"change -> database in {in_db:.2f} s (heartbeat 5 s)")
        assert in_db < 2.0
    finally:
        watcher.close()
        cloud.stop_api()
