"""Start the root rank: ``python -m cloudland_launcher [--hypervisors N] ...``.

Alone it is the all-in-one cloud: it starts a host agent on this machine that runs every
rank. With ``--cluster`` it waits for the host agents of a cluster's hosts to join
(``cloudland cluster up``, README "Running a cluster"). Flags override ``CLOUDLAND_*``
variables, which override the embedded defaults.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from cloudland import log as cl_log
from cloudland import mpienv, pki
from cloudland.config import TreeSettings
from cloudland.errors import ConfigError
from cloudland.priority import raise_priority
from cloudland.statedir import make_private


def parse(argv: list[str]) -> TreeSettings:
    parser = argparse.ArgumentParser(prog="python -m cloudland_launcher", description=__doc__)
    parser.add_argument("--hypervisors", type=int)
    parser.add_argument("--per-leaf", type=int, help="hypervisors per leaf rank (0: automatic)")
    parser.add_argument("--fanout", type=int, help="children per relay (0: flat)")
    parser.add_argument("--grpc", help="address the root's gRPC service listens on")
    parser.add_argument("--listen", help="IP:PORT of the rendezvous where ranks and host agents reach the root")
    parser.add_argument("--cluster", action="store_true", default=None,
                        help="hosts join through their host agents; start none here")
    parser.add_argument("--state-dir", type=Path)
    parser.add_argument("--pki", help="the tree's CA and certificates (default: <state-dir>/pki; made if missing)")
    parser.add_argument("--heartbeat", type=float, dest="heartbeat_s")
    parser.add_argument("--max-sleep", type=float, dest="max_sleep_s")
    parser.add_argument("--linger", type=float, dest="linger_s")
    parser.add_argument("--test-ops", action="store_true", default=None)
    ns = parser.parse_args(argv)
    return TreeSettings.from_env(**vars(ns))


def main(argv: list[str] | None = None) -> int:
    cl_log.setup("root")
    try:
        settings = parse(sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        print(f"cloudland: {exc}", file=sys.stderr)
        return 2
    # Before any thread or child (the local host agent, gRPC's threads): they inherit it.
    raise_priority(settings.tree_nice, "root")
    # Private state (issue 15): the state directory 0700 and our files 0600; the CA made on
    # first start, whose certificates close gRPC and the rendezvous to all but the tree's own.
    make_private(settings.state_dir, qemu=settings.driver == "libvirt")
    pki.ensure(settings.pki_dir)
    cl_log.setup("root", log_file=cl_log.rank_log_file(settings.state_dir, "root"))
    # MPI on the interface the ranks reach the rendezvous on (mpienv.interface_of).
    mpi = mpienv.import_mpi(settings.listen.rpartition(":")[0].strip("[]") if settings.listen else None)
    from cloudland_launcher.root import Root
    from cloudland_launcher.service import serve

    root = Root(settings, mpi)
    try:
        server = serve(root, settings.grpc, settings.pki_dir)
    except ConfigError as exc:
        print(f"cloudland: {exc}", file=sys.stderr)
        return 2
    try:
        listen = root.listen()
    except OSError as exc:
        print(f"cloudland: cannot listen on {settings.listen} (CLOUDLAND_LISTEN): {exc}", file=sys.stderr)
        return 2
    logging.getLogger(__name__).warning(
        "event=root_started grpc=%s listen=%s hypervisors=%d per_leaf=%d fanout=%d cluster=%s",
        settings.grpc, listen, root.shape.hypervisors, root.shape.per_leaf, root.shape.fanout, settings.cluster,
    )
    root.run()
    server.stop(grace=1)
    os._exit(0)  # no MPI_Finalize: it may wait on dead peers (see launcher/rank.py)


if __name__ == "__main__":
    sys.exit(main())
