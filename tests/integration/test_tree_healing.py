"""Self-healing: a rank killed with SIGKILL while 100 commands are in flight.

Every command must end (OK, or UNAVAILABLE for what went through the dead
rank), none may hang, and within 10 s a broadcast reaches every hypervisor
again: the host agent starts a new process, which links itself back in
(proto/README.md §10). The root's health view must say what happened.
"""

from __future__ import annotations

import os
import random
import signal
import time
from concurrent.futures import ThreadPoolExecutor, wait

import pytest

from cloudland import operations, procinfo
from cloudland_proto.v1 import diag_pb2 as diag
from cloudland_proto.v1 import envelope_pb2 as pb
from cloudland_launcher.harness import node_name, wait_for

# Every scenario here runs beside a CPU hog (tests/hog.py): its bounds are the product's promise on
# a loaded machine (issue 15), not only on an idle one.
pytestmark = pytest.mark.usefixtures("cpu_hog")

# 100 hypervisors, 4 per leaf, fan-out 8: root -> 3 relays of 8 leaves + 1 leaf; 29 ranks.
SHAPE = (100, 4, 8)
COMMANDS = 100


def run_storm_and_kill(tree, victim: str) -> tuple[list[list[pb.Reply]], float, set[int]]:
    """Start COMMANDS sleeps across the tree, SIGKILL ``victim`` mid-way, gather every reply."""
    peers = tree.peers()
    victim_peer = peers[victim]
    under_victim = set(range(victim_peer.node.first_leaf * 4, min(victim_peer.node.end_leaf * 4, 100)))
    rng = random.Random(3)
    plans = []
    for i in range(COMMANDS):
        targets = set(rng.sample(range(100), 5))
        if i % 4 == 0:  # make sure plenty of commands go through the victim
            targets.add(rng.choice(sorted(under_victim)))
        plans.append(sorted(targets))
    with ThreadPoolExecutor(max_workers=COMMANDS) as pool:
        futures = [pool.submit(tree.client.run, "sleep", t, request=diag.SleepRequest(seconds=2.0), timeout=25) for t in plans]
        time.sleep(0.7)  # commands are in flight: the sleeps take 2 s
        os.kill(victim_peer.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        done, not_done = wait(futures, timeout=20)
        assert not not_done, f"{len(not_done)} commands hung after {victim} was killed"
    results = [f.result() for f in futures]
    for plan, replies in zip(plans, results):
        assert sorted(r.hypervisor for r in replies) == plan, "every target answered exactly once"
        for reply in replies:
            assert reply.status in (pb.OK, pb.UNAVAILABLE), reply
            if reply.status == pb.UNAVAILABLE:
                assert reply.hypervisor in under_victim, reply
                assert f"hypervisor {reply.hypervisor}" in reply.error and reply.job_id in reply.error
    return results, killed_at, under_victim


def wait_healed(tree, killed_at: float) -> float:
    """Broadcast until every hypervisor answers OK; return seconds since the kill."""
    while time.monotonic() - killed_at < 10:
        replies = tree.client.run("ping", timeout=2)
        if len(replies) == tree.hypervisors and all(r.status == pb.OK for r in replies):
            return time.monotonic() - killed_at
        time.sleep(0.2)
    raise AssertionError("a broadcast did not reach every hypervisor within 10 s of the kill")


def test_leaf_killed_with_commands_in_flight(make_tree, cpu_hog):
    tree = make_tree(*SHAPE)
    victim = "leaf 3"
    old_pid = tree.peers()[victim].pid
    results, killed_at, under_victim = run_storm_and_kill(tree, victim)
    unavailable = [r for replies in results for r in replies if r.status == pb.UNAVAILABLE]
    assert unavailable, "commands through the killed leaf were answered UNAVAILABLE"
    healed = wait_healed(tree, killed_at)
    print(f"leaf killed: every hypervisor answering {healed:.1f} s after the kill (bound 10 s); "
          f"load {cpu_hog.load():.1f}")

    # The root hears of its grandchildren (leaf 3 is under relay[0:8)) in its children's
    # heartbeats: one beat behind the broadcast that reached them. Asserted at once, it once found
    # the new leaf still STARTING on a loaded machine (issue 15), a moment nothing promised.
    wait_for(lambda: tree.peers()[victim].state == pb.PEER_OK, timeout=5, what=f"{victim} OK in the root's view")
    peers = tree.peers()
    assert peers[victim].state == pb.PEER_OK and peers[victim].respawns == 1
    assert peers[victim].pid != old_pid and not procinfo.alive(old_pid)
    events = [(node_name(e.node), e.state, e.reason) for e in tree.client.health().events]
    lost = [e for e in events if e[0] == victim and e[1] == pb.PEER_LOST]
    assert lost and f"process {old_pid} exited" in lost[0][2], events[-5:]
    assert any(e[0] == victim and e[1] == pb.PEER_OK and "relink 1" in e[2] for e in events)


def test_relay_killed_with_commands_in_flight(make_tree, cpu_hog):
    tree = make_tree(*SHAPE)
    victim = "relay[0:8)"
    before = tree.peers()
    orphans = [p.pid for name, p in before.items() if name.startswith("leaf") and p.node.end_leaf <= 8]
    assert len(orphans) == 8
    results, killed_at, under_victim = run_storm_and_kill(tree, victim)
    assert any(r.status == pb.UNAVAILABLE for replies in results for r in replies)
    assert any(r.status == pb.OK for replies in results for r in replies)
    healed = wait_healed(tree, killed_at)
    print(f"relay killed: its subtree whole, every hypervisor answering, {healed:.1f} s after the kill "
          f"(bound 10 s); load {cpu_hog.load():.1f}")

    # The dead relay cost only itself: its leaves lived on and linked to its successor.
    # (The root hears of its grandchildren in its children's heartbeats: one beat behind.)
    wait_for(lambda: all(tree.peers()[f"leaf {i}"].state == pb.PEER_OK for i in range(8)), timeout=5,
             what="the dead relay's leaves to show OK in the root's view")
    peers = tree.peers()
    assert peers[victim].respawns == 1 and peers[victim].state == pb.PEER_OK
    assert peers[victim].pid != before[victim].pid
    assert all(peers[f"leaf {i}"].state == pb.PEER_OK for i in range(8))
    assert sorted(peers[f"leaf {i}"].pid for i in range(8)) == sorted(orphans)
    events = [(node_name(e.node), e.state) for e in tree.client.health().events]
    assert (victim, pb.PEER_LOST) in events


def test_garbage_from_a_child_is_rejected_and_logged_never_executed(make_tree):
    tree = make_tree(10, 1, 4)  # relays [0:4) [4:8) and leaves 8, 9 under the root
    for hv, kind in ((1, "garbage"), (5, "command")):
        [reply] = tree.client.run("test.send_raw", hv, request=diag.TestSendRawRequest(kind=kind), timeout=10)
        assert reply.status == pb.OK, reply.error
    time.sleep(1.2)  # heartbeats carry the rejection counts up
    assert tree.client.health().rejected >= 2
    assert "not a protobuf envelope" in tree.log("relay[0:4)") or "has no body" in tree.log("relay[0:4)")
    assert "command from child leaf 5 is not allowed upward" in tree.log("relay[4:8)")
    # The Command sent upward asked every hypervisor to count key "upward": none did.
    replies = tree.client.run("test.count", request=diag.TestCountRequest(key="upward"), timeout=10)
    assert {r.hypervisor: operations.result_of(r, "test.count").count for r in replies} == {hv: 1 for hv in range(10)}
    assert all(p.state == pb.PEER_OK for p in tree.peers().values())


def test_a_leaf_that_crashes_is_logged_and_replaced_at_once(make_tree, cpu_hog):
    """An exception on a leaf's MPI thread (here: its heartbeat's report) kills the rank.

    The traceback must be in the leaf's log; it must die without MPI_Finalize (which
    can wait on a dead peer), and its parent, on the same host, sees its process gone
    at once rather than after lost_after heartbeats (5 s here).
    """
    tree = make_tree(4, 1, 32)
    old_pid = tree.peers()["leaf 1"].pid
    [reply] = tree.client.run("test.break_report", 1, timeout=10)
    assert reply.status == pb.OK, reply.error
    broken_at = time.monotonic()

    def replaced() -> bool:
        # Replaced is a new process that has said hello (OK): it is known by its pid from its
        # link on, while it is still STARTING, a moment the product promises nothing about.
        peer = tree.peers()["leaf 1"]
        return peer.pid not in (old_pid, 0) and peer.state == pb.PEER_OK

    while time.monotonic() - broken_at < 4 and not replaced():
        time.sleep(0.1)
    took = time.monotonic() - broken_at
    peers = tree.peers()
    assert replaced(), f"the crashed leaf was not replaced within 4 s: {peers['leaf 1']}"
    assert not procinfo.alive(old_pid)
    print(f"crashed leaf replaced (a new process, OK) {took:.1f} s after its report broke (bound 4 s); "
          f"load {cpu_hog.load():.1f}")
    events = [(node_name(e.node), e.state, e.reason) for e in tree.client.health().events]
    lost = [e for e in events if e[0] == "leaf 1" and e[1] == pb.PEER_LOST]
    assert lost and f"process {old_pid} exited" in lost[0][2], events[-5:]
    log = tree.log("leaf 1")
    assert "event=rank_crashed node=leaf 1" in log and "broken by test.break_report" in log, log
    assert all(p.state == pb.PEER_OK for p in peers.values())


def test_the_trees_processes_run_ahead_of_tenants_work(make_tree):
    """Root, host agent and ranks at the tree's nice value, each in its session's autogroup too
    (cloudland/priority.py): the spinning processes beside them are at the default level."""
    tree = make_tree(4, 1, 2)  # a relay [0:2) and [2:4) under the root: both kinds of rank
    health = tree.client.health()
    agent, _ = procinfo.local_host_agent(tree.state_dir)
    processes = {"root": health.peers[0].pid, "host agent": agent,
                 **{node_name(p.node): p.pid for p in health.peers[1:]}}
    assert len(processes) == 8 and all(processes.values()), processes
    found = {}
    for name, pid in processes.items():
        autogroup = open(f"/proc/{pid}/autogroup").read().split()[-1] if os.path.exists("/proc/self/autogroup") else "-10"
        found[name] = (os.getpriority(os.PRIO_PROCESS, pid), int(autogroup))
    assert found == {name: (-10, -10) for name in processes}, found
