"""One process of tests/integration/test_mpi_abort.py: a root, relay or leaf linked as the tree's
ranks are (each its own ``mpiexec -n 1`` job, connect/accept, cloudland.mpienv's environment) and
talking through the tree's own ``Link`` (launcher/link.py).

    python mpi_abort_peer.py ROLE DIR SECONDS [--as-tree]

Every process sends on each of its links in every loop, and polls them (children first, as a
relay's loop does): 2 kB messages downward (commands, heartbeats), 4 MB upward (reply batches), so
that a killed process dies with messages half-way both ways. ``--as-tree``: the root's link made with
``contain=True``, the relay's link to its parent with ``guard=True`` (launcher/link.py's options,
which the tree itself does not use: docs/architecture.md "Supervision"); without it, plain links
as the tree makes them. Each prints ``linked <pid>`` once linked and,
at the end (after SECONDS), ``survived errors=N``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from cloudland import mpienv  # noqa: E402
from cloudland_launcher.link import Link  # noqa: E402

MPI = mpienv.import_mpi("127.0.0.1")
DOWN, UP = bytes(2_000), bytes(4_000_000)


def publish(directory: Path, name: str) -> str:
    port = MPI.Open_port()
    (directory / f"{name}.tmp").write_text(port)
    (directory / f"{name}.tmp").rename(directory / name)
    return port


def lookup(directory: Path, name: str) -> str:
    while not (directory / name).exists():
        time.sleep(0.01)
    return (directory / name).read_text()


def main() -> None:
    role, directory, seconds = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
    as_tree = "--as-tree" in sys.argv
    down: list[Link] = []  # links to children: we send them DOWN
    up: list[Link] = []    # the link to the parent: we send it UP
    if role == "root":
        down.append(Link(MPI, MPI.COMM_SELF.Accept(publish(directory, "root.port")), "relay", contain=as_tree))
    elif role == "relay":
        up.append(Link(MPI, MPI.COMM_SELF.Connect(lookup(directory, "root.port")), "parent", guard=as_tree))
        down.append(Link(MPI, MPI.COMM_SELF.Accept(publish(directory, "relay.port")), "leaf"))
    else:
        up.append(Link(MPI, MPI.COMM_SELF.Connect(lookup(directory, "relay.port")), "parent"))
    print(f"linked {os.getpid()}", flush=True)
    end = time.monotonic() + (3600 if role == "leaf" else seconds)
    while time.monotonic() < end:
        for links, data in ((down, DOWN), (up, UP)):
            for link in links:
                if len(link._outbox) < 4:
                    link.send(data, ring=False)
        for link in down + up:
            link.poll(again=False)
        time.sleep(0.001)
    print(f"survived errors={sum(link.errors for link in down + up)}", flush=True)
    os._exit(0)  # no MPI_Finalize: a peer is dead (launcher/rank.py does the same)


if __name__ == "__main__":
    main()
