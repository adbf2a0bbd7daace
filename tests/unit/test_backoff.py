"""The idle sleep of a rank's loop (proto/README.md §7): how it grows, and what resets it."""

from __future__ import annotations

import pytest

from cloudland_launcher import link


class RecordingBell:
    """Stands in for the rank's doorbell: records each sleep asked for, rings when told."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self.rung_next = False

    def wait(self, timeout: float) -> bool:
        self.sleeps.append(timeout)
        rung, self.rung_next = self.rung_next, False
        return rung


@pytest.fixture
def backoff(monkeypatch: pytest.MonkeyPatch) -> link.Backoff:
    monkeypatch.setattr(link, "Doorbell", RecordingBell)
    b = link.Backoff(max_sleep=0.005)
    b.local_max_sleep = 0.1
    return b


def test_remote_peers_are_polled_closely(backoff: link.Backoff) -> None:
    backoff.set_ceiling(all_peers_local=False)
    for _ in range(9):
        backoff.idle()
    assert backoff.doorbell.sleeps[:7] == pytest.approx([50e-6, 100e-6, 200e-6, 400e-6, 800e-6, 1.6e-3, 3.2e-3])
    assert backoff.doorbell.sleeps[7:] == [0.005, 0.005]


def test_peers_that_ring_let_the_sleep_grow_eightfold(backoff: link.Backoff) -> None:
    backoff.set_ceiling(all_peers_local=True)
    for _ in range(6):
        backoff.idle()
    assert backoff.doorbell.sleeps[:4] == pytest.approx([50e-6, 400e-6, 3.2e-3, 25.6e-3])
    assert backoff.doorbell.sleeps[4:] == [0.1, 0.1]


def test_a_ring_or_activity_resets_the_sleep(backoff: link.Backoff) -> None:
    backoff.set_ceiling(all_peers_local=True)
    for _ in range(5):
        backoff.idle()
    backoff.doorbell.rung_next = True
    backoff.idle()   # slept 0.1, was rung
    backoff.idle()   # so this one is short again
    assert backoff.doorbell.sleeps[-1] == pytest.approx(50e-6)
    for _ in range(3):
        backoff.idle()
    backoff.activity()
    backoff.idle()
    assert backoff.doorbell.sleeps[-1] == pytest.approx(50e-6)


def test_a_peer_moving_to_another_host_brings_the_close_polling_back(backoff: link.Backoff) -> None:
    backoff.set_ceiling(all_peers_local=True)
    for _ in range(5):
        backoff.idle()
    backoff.set_ceiling(all_peers_local=False)
    for _ in range(2):
        backoff.idle()
    assert backoff.doorbell.sleeps[-2:] == [0.005, 0.005]  # not one more 0.1 s sleep
    backoff.activity()
    for _ in range(3):
        backoff.idle()
    assert backoff.doorbell.sleeps[-3:] == pytest.approx([50e-6, 100e-6, 200e-6])
