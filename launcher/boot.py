"""How a host agent starts a rank: ``python -m cloudland_launcher.boot MODULE ARGS...``.

The rank's first act is its priority (cloudland/priority.py), before its imports: a leaf's take
0.4 s of CPU, 2.5-3 s on a loaded machine at the default level, and a replaced rank is not back
until they are done. hydra's proxy made the rank a session of its own, whose autogroup starts at
the default level whatever the nice value the host agent handed down; this gives it that value.
Then ``MODULE`` runs as ``__main__`` with ``ARGS`` (its command line still names it, as
``ps`` and the tests look for it).
"""

from __future__ import annotations

import os
import runpy
import sys

from cloudland.priority import raise_priority


def main() -> None:
    module = sys.argv.pop(1)
    raise_priority(os.getpriority(os.PRIO_PROCESS, 0), module)
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
