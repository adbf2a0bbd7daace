"""The ``cloudland`` console script: every command group in one Typer app.

``tree`` (tree.py) and ``cluster`` (cluster.py) talk to the tree's root over gRPC; ``up``
(up.py) starts the tree and the REST API together; the commands that talk to the API
(configure, login, flavor, image, key, hyper, vm, job) are in cloud.py, vm.py and hyper.py,
with the exit codes of common.py.
"""

from __future__ import annotations

import typer

from cloudland_cli import cloud
from cloudland_cli.cluster import cluster_app
from cloudland_cli.tree import tree_app
from cloudland_cli.up import up

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
app.add_typer(tree_app, name="tree")
app.add_typer(cluster_app, name="cluster", help="The hosts of a multi-host tree: list, join, remove.")
cloud.register(app)
app.command("up")(up)


@app.callback()
def cloudland() -> None:
    """CloudLand, a lightweight IaaS over an MPI message tree of hypervisor agents."""


def main() -> None:
    """Entry point of the ``cloudland`` console script (and of ``python -m cloudland_cli``)."""
    app(prog_name="cloudland")
