"""Issue 15, must-show 5: schemathesis fuzzes every operation of the OpenAPI document from the
document itself, authenticated as the operator's admin, on SQLite and on PostgreSQL.

Every default check of schemathesis runs but one: no 5xx, every status and media type the
document declares, responses matching their schemas, invalid input refused, a 405 (and an
OPTIONS) naming every method of its path in ``Allow``, a missing or bad token refused. Left
out: ``positive_data_acceptance``, which wants a 2xx from any input that fits the schema, while
a cursor or a reference that fits it may still name nothing (400, 404) or the tree may not be
there: jobs stay pending.

Bounded for CI: a fixed number of examples per operation, derandomized so that every run asks
the same; ``CLOUDLAND_FUZZ_EXAMPLES=500`` and ``CLOUDLAND_FUZZ_SEED=random`` explore further by hand.
PostgreSQL gets a quarter of them (``CLOUDLAND_FUZZ_POSTGRES_EXAMPLES``): the routes, their
validation and so the shapes fuzzed are the backends' same, and what only PostgreSQL refuses is
covered on it still: schemathesis's coverage phase (the boundary values of every parameter and body
field in the document, however few the random examples) runs in full on both, and, on both,
tests/api/test_bad_input.py sends every route's path 2**64 and %00, and a body integers past 64 bits,
a NUL byte and names past their column's length.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from cloudland_api.models import Role
from cloudland_api.security import ADMIN_CREDENTIALS_FILE
from cloudland_api.services import identity
from tests.api.conftest import Api, Launcher, running
from tests.conftest import BACKENDS
from tests.api.test_vnc import Agents, agents  # noqa: F401 (a fixture: a root whose agents answer vm.get)

EXAMPLES = int(os.environ.get("CLOUDLAND_FUZZ_EXAMPLES", "8"))
POSTGRES_EXAMPLES = int(os.environ.get("CLOUDLAND_FUZZ_POSTGRES_EXAMPLES", str(max(1, EXAMPLES // 4))))
DERANDOMIZE = os.environ.get("CLOUDLAND_FUZZ_SEED", "fixed") == "fixed"


@pytest.fixture
def fuzzed(request: pytest.FixtureRequest, api: Api, admin_headers: dict[str, str], launch: Launcher,
           agents: Agents) -> Any:
    """The app's own OpenAPI document, with one of each resource to find: a flavor, an image, an
    instance running on hypervisor 7, a job; a reader in the organisation; and a root on gRPC whose
    agents answer, so that the routes that ask a hypervisor live (VNC) are fuzzed past the tree."""
    # schemathesis 4.32's lazy loader reads Node._nodeid, which pytest 9 no longer has.
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid
    running(api, launch)
    api.add_user("rita", "admin", Role.reader)
    return schemathesis.openapi.from_asgi("/openapi.json", api.app)


schema = schemathesis.pytest.from_fixture("fuzzed")


@schema.auth()
class OperatorAdmin:
    """The first admin, signed in through the login service with the password in the state dir:
    schemathesis knows the requests carry a token, and tries them without one too. Signed in once
    per app (schemathesis asks again after each 401 it provoked, and argon2 is slow on purpose)."""

    def get(self, case: Any, context: Any) -> str:
        app = context.app
        if getattr(app.state, "fuzz_token", None):
            return str(app.state.fuzz_token)
        fields = dict(line.split("=", 1) for line in (app.state.settings.state_dir / ADMIN_CREDENTIALS_FILE)
                      .read_text().split())
        with app.state.sessions() as session:
            token, _ = identity.login(session, app.state.signing_key, 3600, fields["username"], fields["password"])
        app.state.fuzz_token = token
        return token

    def set(self, case: Any, data: str, context: Any) -> None:
        if case.headers is None:
            case.headers = {}
        case.headers["Authorization"] = f"Bearer {data}"


def survives(case: Any) -> None:
    wait = (case.query or {}).get("wait")
    if isinstance(wait, (int, float)) and not isinstance(wait, bool):
        case.query["wait"] = min(wait, 0.05)  # a long poll of a job that never ends here: keep it short
    case.call_and_validate(excluded_checks=[schemathesis.checks.positive_data_acceptance])


BOUNDED = {"deadline": None, "derandomize": DERANDOMIZE, "suppress_health_check": list(HealthCheck)}
SQLITE, POSTGRESQL = BACKENDS  # the database_url fixture's parameters, one per test here


@pytest.mark.timeout(900)  # bounded by the examples; this only guards a machine shared with other runs
@pytest.mark.parametrize("database_url", [SQLITE], indirect=True)
@schema.parametrize()
@settings(max_examples=EXAMPLES, **BOUNDED)
def test_every_operation_survives_fuzzing(case: Any) -> None:
    survives(case)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("database_url", [POSTGRESQL], indirect=True)
@schema.parametrize()
@settings(max_examples=POSTGRES_EXAMPLES, **BOUNDED)
def test_every_operation_survives_fuzzing_on_postgresql(case: Any) -> None:
    survives(case)
