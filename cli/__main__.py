"""``python -m cloudland_cli``: the ``cloudland`` command."""

from cloudland_cli.main import main

main()
