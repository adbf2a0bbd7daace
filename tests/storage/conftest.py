"""The storage tests' shared parts: one throwaway Ceph for the whole session (tests/storage/ceph.py),
started only when a test asks for it and always stopped, its directory removed, even on failure."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.storage.ceph import CephCluster, ceph_missing


@pytest.fixture(scope="session")
def ceph_cluster() -> Iterator[CephCluster]:
    """A running single-node Ceph with an initialised ``volumes`` pool and a ``client.cloudland`` user."""
    reason = ceph_missing()
    if reason is not None:
        pytest.skip(reason)
    cluster = CephCluster()
    try:
        cluster.start()
        print(f"\nceph: monitor, manager and OSD up, pool ready in {cluster.started_s:.1f}s")
        yield cluster
    finally:
        cluster.stop()
