"""``python -m cloudland_lab``: see cli.py."""

from .cli import main

main()
