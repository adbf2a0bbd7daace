import os

import pytest

from cloudland_launcher.harness import start_tree, stop_tree


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.mpi)
            item.add_marker(pytest.mark.root)


@pytest.fixture
def make_tree(tmp_path):
    """Start real trees; every one is stopped and checked for leftover ranks, namespaces, links and
    processes (a dnsmasq) afterwards, each even when the test or another tree's stop failed."""
    trees = []

    def make(hypervisors: int, per_leaf: int = 1, fanout: int = 32, heartbeat: float = 0.5, *extra: str):
        tree = start_tree(tmp_path / f"tree{len(trees)}", hypervisors, per_leaf, fanout, heartbeat, *extra)
        trees.append(tree)
        return tree

    yield make
    failures = []
    for tree in trees:
        try:
            stop_tree(tree)
        except Exception as error:  # noqa: BLE001 - stop the others too, then report every one
            failures.append(f"{tree.state_dir}: {error}")
    assert not failures, "; ".join(failures)


def pytest_configure(config: pytest.Config) -> None:
    if os.geteuid() != 0:
        config.issue_config_time_warning(
            pytest.PytestWarning("integration tests expect root (they kill and spawn ranks)"), 2
        )


@pytest.fixture
def make_cloud(make_tree, tmp_path):
    """A tree and the REST API on it (tests/integration/cloud.py); the API is stopped first."""
    from tests.integration.cloud import Cloud

    clouds = []

    def make(hypervisors: int, database_url: str | None = None, per_leaf: int = 1, **settings: str) -> Cloud:
        tree = make_tree(hypervisors, per_leaf, 32, 0.5)
        cloud = Cloud.on(tree, tmp_path / f"api{len(clouds)}", database_url, **settings)
        clouds.append(cloud)
        cloud.start_api()
        return cloud

    yield make
    for cloud in clouds:
        cloud.stop_api()
