"""The ``cloudland`` command line (import name ``cloudland_cli``): a client of the REST API and of the tree's root.

It imports the shared core (``cloudland``) and the contracts (``cloudland_proto``), never server
code: the API, the launcher and the agents run as processes it starts or talks to
(tests/unit/test_layers.py).
"""
