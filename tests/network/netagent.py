"""A network agent process for the data-plane tests: run inside a lab host, as a leaf would be.

It hosts one hypervisor (``--hypervisor``, VTEP ``--vtep``) and runs the real ``net.*`` handlers
(agents/network/ops.py) for requests read from stdin, one JSON object a line, answering one a
line: ``{"op": "net.sync", "request": {...}}`` (the request message's fields, as ``--args``
takes them) answers ``{"result": {...}}``; ``guest.plug``, ``guest.dhcp`` and ``guest.unplug``
drive the test-driver guests (agents/network/guest.py) in this host. A failure answers
``{"error": "..."}``. Killing it with SIGKILL is the test of an agent's crash.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from cloudland import operations
from cloudland_agents import ops
from cloudland_agents.hypervisor import open_simulated
from cloudland_agents.network import ops as net_ops
from cloudland_agents.network.guest import Guest
from cloudland_agents.network.names import Names


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hypervisor", type=int, required=True)
    parser.add_argument("--vtep", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    ns = parser.parse_args()
    hypervisor = open_simulated(ns.hypervisor, ns.state_dir, ns.vtep)
    network = net_ops.Network(hypervisor, Names(ns.prefix))
    net_ops.network_for.set(hypervisor, network)
    guests: dict[str, Guest] = {}
    jobs = 0
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        message = json.loads(line)
        op = message["op"]
        try:
            answer: dict[str, Any]
            if op.startswith("net."):
                jobs += 1
                handler = ops.lookup(op, test_ops=False)
                assert handler is not None, op
                ctx = ops.Context(hypervisor, f"job-{jobs}", 0.0, lambda _: None)
                answer = {"result": operations.as_dict(handler.run(ctx, operations.parse(op, message["request"])))}
            elif op == "guest.plug":
                guest = Guest(network.plane.kernel.ipr, message["name"], message["bridge"], message["mac"])
                guests[guest.name] = guest.plug()
                answer = {}
            elif op == "guest.dhcp":
                answer = {"lease": dataclasses.asdict(guests[message["name"]].dhcp())}
            elif op == "guest.unplug":
                guest = guests.pop(message["name"], None) or Guest(network.plane.kernel.ipr, message["name"], "", "")
                guest.unplug()
                answer = {}
            else:
                answer = {"error": f"unknown op {op!r}"}
        except Exception as exc:  # noqa: BLE001 - every failure is an answer, the process goes on
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)
    network.close()


if __name__ == "__main__":
    main()
