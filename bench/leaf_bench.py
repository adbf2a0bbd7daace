"""A leaf's CPU per ``vm.create`` on one simulated hypervisor, stage by stage, in one process.

Each create runs as the leaf runs it (agents/leaf.py ``_execute``): the operation (define, start,
read the record back, build its message), the save of the hypervisor's domains before the reply
(agents/simdomains.py), the reply's packing and the hypervisor's report. The baseline in the same
run saves every domain again after each create (``persist()``, what every save did before issue
15); the measured path saves only the domain the create names (``persist(domain_named(...))``).
Thread CPU time per create, with ``--domains`` already on the hypervisor.

    .venv/bin/python bench/leaf_bench.py [--domains 10,200] [--creates 100]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from pathlib import Path

from cloudland import operations
from cloudland_agents import leaf as _leaf  # noqa: F401 - registers every operation
from cloudland_agents import ops
from cloudland_agents.hypervisor import open_simulated
from cloudland_agents.simdomains import domain_named
from cloudland_proto.v1 import compute_pb2 as cpb


def request(n: int) -> cpb.VmCreateRequest:
    u = str(uuid.uuid4())
    return cpb.VmCreateRequest(spec=cpb.DomainSpec(name=f"cl-{u}", uuid=u, vcpus=1, memory_mib=64,
                                                   metadata={"instance_id": str(n + 1)}))


def run(domains: int, creates: int, whole: bool) -> dict[str, float]:
    """ms of thread CPU per create for each stage, ``domains`` there first; its state removed after."""
    with tempfile.TemporaryDirectory(prefix="cloudland-leaf-bench-") as state:
        return measure(Path(state), domains, creates, whole)


def measure(state: Path, domains: int, creates: int, whole: bool) -> dict[str, float]:
    hypervisor = open_simulated(1, state, saved=True)
    create = ops.lookup("vm.create", False)
    assert create is not None
    stages = dict.fromkeys(("operation", "save", "pack", "report"), 0.0)
    for n in range(domains + creates):
        message = request(n)
        ctx = ops.Context(hypervisor, f"job-{n}", time.monotonic() + 60, lambda *_: None, checked=False)
        t0 = time.thread_time()
        result = create.run(ctx, message)
        t1 = time.thread_time()
        hypervisor.persist(None if whole else domain_named(create.name, message))
        t2 = time.thread_time()
        operations.pack_result(create.name, result)
        t3 = time.thread_time()
        hypervisor.report()
        t4 = time.thread_time()
        if n >= domains:
            for stage, spent in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                stages[stage] += spent
    return {stage: 1000 * spent / creates for stage, spent in stages.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domains", default="10,200", help="domains on the hypervisor before the creates")
    parser.add_argument("--creates", type=int, default=100)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} at the start\n")
    print("| domains there | save after each create | operation | save | pack | report | **total ms CPU** |")
    print("|---|---|---|---|---|---|---|")
    for domains in (int(d) for d in args.domains.split(",")):
        for whole, name in ((True, "baseline: every domain"), (False, "the one it names")):
            ms = run(domains, args.creates, whole)
            print(f"| {domains}-{domains + args.creates} | {name} | {ms['operation']:.2f} | {ms['save']:.2f} | "
                  f"{ms['pack']:.3f} | {ms['report']:.2f} | **{sum(ms.values()):.2f}** |")
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
