"""The host agent (launcher/hostd.py) against a root played by the test over a real TCP channel.

Its ranks are real processes (``sleep``), so starting, restarting after a kill, stopping and
reconciling on a welcome are observed on the process table, not on a fake.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from pathlib import Path

import pytest

from cloudland import pki, procinfo
from cloudland.topology import NodeRange
from cloudland_launcher import hostd, rendezvous
from cloudland_launcher.harness import wait_for
from cloudland_launcher.hostd import HostAgent
from cloudland_launcher.subtree import node_id
from cloudland_proto.v1 import envelope_pb2 as pb
from cloudland_proto.v1 import link_pb2 as lpb

LEAF, RELAY = NodeRange(3, 4), NodeRange(0, 4)


class PlayedRoot:
    """A listener that accepts host agents' channels (over TLS, with the root's certificate)
    and lets the test speak for the root."""

    def __init__(self, pki_dir: Path) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.tls = rendezvous.Tls.load(pki_dir, pki.ROOT)

    def accept(self) -> tuple[rendezvous.Conn, lpb.HostHello]:
        self.server.settimeout(10)
        sock, _ = self.server.accept()
        sock.settimeout(10)
        conn = rendezvous.Conn(self.tls.server.wrap_socket(sock, server_side=True), 10)
        frame = rendezvous.receive(conn, "agent")
        assert frame.WhichOneof("body") == "host_hello"
        return conn, frame.host_hello


SLEEPER = "import time; time.sleep(120)"


@pytest.fixture
def agent(request: pytest.FixtureRequest, tmp_path: Path, tree_credentials: Path):
    """A host agent whose ranks run ``SLEEPER``, or the code a test gives by indirect parametrisation."""
    code = getattr(request, "param", SLEEPER)
    root = PlayedRoot(tree_credentials)
    agent = HostAgent(root.address, "127.0.0.1", 1, tmp_path, tree_credentials, host="h1",
                      command=lambda node: [sys.executable, "-c", code])
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    yield agent, root
    agent.stop("test over")
    thread.join(10)
    root.server.close()
    assert not thread.is_alive(), "the host agent did not stop"
    assert not [r for r in agent.ranks.values() if r.proc and r.proc.poll() is None], "a rank outlived its agent"


def pid_of(agent: HostAgent, node: NodeRange) -> int:
    rank = agent.ranks.get(node)
    return rank.proc.pid if rank and rank.proc and rank.proc.poll() is None else 0


def test_runs_what_the_welcome_says_and_restarts_a_killed_rank(agent):
    agent, root = agent
    conn, hello = root.accept()
    assert (hello.host, hello.address, hello.leaves, list(hello.held)) == ("h1", "127.0.0.1", 1, [])
    rendezvous.send(conn, welcome=lpb.HostWelcome(leaves=[3], run=[node_id(LEAF), node_id(RELAY)]))
    first = wait_for(lambda: pid_of(agent, LEAF), 10, "the leaf to start")
    assert wait_for(lambda: pid_of(agent, RELAY), 10, "the relay to start")
    os.kill(first, signal.SIGKILL)
    second = wait_for(lambda: pid_of(agent, LEAF) not in (0, first) and pid_of(agent, LEAF), 5, "a restart")
    assert agent.ranks[LEAF].restarts == 1 and procinfo.alive(second)

    rendezvous.send(conn, stop=lpb.StopRank(node=node_id(RELAY), reason="placed on another host"))
    wait_for(lambda: RELAY not in agent.ranks, 10, "the relay to stop")
    conn.close()


def test_a_rank_killed_again_and_again_restarts_at_once_each_time(agent):
    """Killed is not crashing: ten SIGKILLs in a row, and the eleventh start is as prompt as the
    first (a doubling delay had reached 5 s by the sixth, measured in tests/multihost)."""
    agent, root = agent
    conn, _ = root.accept()
    rendezvous.send(conn, welcome=lpb.HostWelcome(leaves=[3], run=[node_id(LEAF)]))
    pid = wait_for(lambda: pid_of(agent, LEAF), 10, "the leaf to start")
    for round_ in range(10):
        os.kill(pid, signal.SIGKILL)
        pid = wait_for(lambda old=pid: pid_of(agent, LEAF) not in (0, old) and pid_of(agent, LEAF), 5,
                       f"restart {round_ + 1}")
        assert agent.ranks[LEAF].restart.delay == hostd.RESTART_MIN_S, f"round {round_}"
    assert agent.ranks[LEAF].restarts == 10
    conn.close()


@pytest.mark.parametrize("agent", ["import sys; sys.exit(3)"], indirect=True)
def test_a_rank_that_keeps_dying_on_its_own_is_restarted_ever_later(agent):
    agent, root = agent
    conn, _ = root.accept()
    rendezvous.send(conn, welcome=lpb.HostWelcome(leaves=[3], run=[node_id(LEAF)]))
    wait_for(lambda: agent.ranks.get(LEAF) and agent.ranks[LEAF].restarts >= 4, 20, "four restarts")
    assert agent.ranks[LEAF].restart.delay >= 16 * hostd.RESTART_MIN_S
    conn.close()


def test_a_lost_channel_keeps_the_ranks_and_the_welcome_after_it_reconciles(agent):
    agent, root = agent
    conn, _ = root.accept()
    rendezvous.send(conn, welcome=lpb.HostWelcome(leaves=[3], run=[node_id(LEAF), node_id(RELAY)]))
    leaf = wait_for(lambda: pid_of(agent, LEAF), 10, "the leaf to start")
    relay = wait_for(lambda: pid_of(agent, RELAY), 10, "the relay to start")
    conn.close()  # the root went away (or the link was cut)

    conn, hello = root.accept()
    assert list(hello.held) == [3], "the agent says which slots it held"
    assert procinfo.alive(leaf) and procinfo.alive(relay), "its ranks ran on meanwhile"
    rendezvous.send(conn, welcome=lpb.HostWelcome(leaves=[3], run=[node_id(LEAF)]))
    wait_for(lambda: not procinfo.alive(relay), 10, "the relay placed elsewhere meanwhile to stop")
    assert pid_of(agent, LEAF) == leaf, "the leaf it still runs is not restarted"
    conn.close()


def test_goodbye_stops_every_rank_and_the_agent(agent):
    agent, root = agent
    conn, _ = root.accept()
    rendezvous.send(conn, welcome=lpb.HostWelcome(leaves=[3], run=[node_id(LEAF)]))
    leaf = wait_for(lambda: pid_of(agent, LEAF), 10, "the leaf to start")
    rendezvous.send(conn, goodbye=pb.Goodbye(reason="root stopping"))
    wait_for(lambda: agent.stopping, 5, "the agent to stop")
    wait_for(lambda: not procinfo.alive(leaf), 10, "its rank to end")
    conn.close()


def test_a_refused_host_stops_and_says_why(agent):
    agent, root = agent
    conn, _ = root.accept()
    rendezvous.send(conn, welcome=lpb.HostWelcome(refused=True, reason="no free leaf"))
    wait_for(lambda: agent.stopping, 5, "the agent to stop")
    assert "no free leaf" in agent.stopping
    conn.close()
