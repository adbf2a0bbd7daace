"""What the API does, apart from HTTP: one module per domain; every function takes the Caller
(``identity``) and raises the domain errors of ``cloudland.errors``.

Tenant-owned rows are read and written through ``crud``, the one tenant-scoped helper: every
query filters on the caller's ``org_id``, so another organisation's row is NotFound, not
Forbidden, and ids cannot be probed. Who may do what (readers only read) is api/policy.py's,
decided by each route's dependency before the service runs, on the role alone.
"""
