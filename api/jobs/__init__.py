"""Jobs: every change the control plane asks of the hypervisors (docs/architecture.md "Jobs").

``engine`` plans, sends, retries and settles jobs of any kind; ``kinds`` is what a kind plugs
in; each other module here is one kind. Importing this package registers the built-in kinds.
"""

from cloudland_api.jobs import image, net, vm, volume  # noqa: F401  (registers the kinds)
from cloudland_api.jobs.engine import Engine, finish, judge
from cloudland_api.jobs.kinds import (
    ALL, KINDS, Kind, Outcome, Plan, Result, Send, Settings, follow_up, follow_ups, register
)

__all__ = ["ALL", "KINDS", "Engine", "Kind", "Outcome", "Plan", "Result", "Send", "Settings", "finish",
           "follow_up", "follow_ups", "judge", "register"]
