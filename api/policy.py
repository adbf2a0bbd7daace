"""Who may do what: one table of (resource type, action) → scope and roles, used by every route.

Every route declares its entry with ``allow(resource, action)``, spread into its decorator::

    @router.delete("/{flavor_id}", status_code=204, **allow("flavor", "delete"))

That adds a dependency deciding the request before the handler runs (and before it waits for
SQLite's write turn), and writes the entry into the OpenAPI document as ``x-required-role``
and ``x-policy`` (plus the 403's description, which /docs shows). The decision reads the
caller's role and nothing else, no row: so it may come first without letting anyone probe ids
(a reader is refused a delete whether or not the id exists). Then the service decides NotFound
from the organisation-scoped query (services/crud.py), then Conflicts.

Scopes say whose role counts:

    public        no token (sign-in)
    job-token     a job's image token, no user (a hypervisor fetches or delivers image bytes)
    self          any signed-in user, on their own account and session; the role does not matter
    organisation  the caller's role in the organisation its token acts in
    cloud         the caller's role in the operator organisation (its admins are the operators)

    project       the caller's role in the project the request acts in (services/projects.py):
                  the higher of their role on the organisation, which covers all its projects,
                  and their role on that project

The table's keys are (resource, action); a rule's scope says where the role is looked up.
Every role-checked scope (organisation, project, cloud) is in ``ROLE_SCOPES``.

``tests/api/test_policy.py`` fails when a route of the OpenAPI document has no entry here, and
when a route that changes something lets a reader do it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, Request

from cloudland.errors import Forbidden
from cloudland_api import audit
from cloudland_api.deps import CurrentUser
from cloudland_api.models import Role
from cloudland_api.schemas import ErrorResponse
from cloudland_api.services.identity import Caller


class Scope(str, enum.Enum):
    """Where the role a rule names is looked up (the module's docstring)."""

    public = "public"
    job_token = "job-token"
    own = "self"
    organisation = "organisation"
    project = "project"
    cloud = "cloud"


ROLE_SCOPES = (Scope.organisation, Scope.project, Scope.cloud)  # where a role is looked up
ANYONE: tuple[Role, ...] = (Role.admin, Role.member, Role.reader)
WRITERS: tuple[Role, ...] = (Role.admin, Role.member)
ADMINS: tuple[Role, ...] = (Role.admin,)
NOBODY: tuple[Role, ...] = ()  # public and job-token routes: no role at all


@dataclass(frozen=True)
class Rule:
    """Who may do one action on one resource type."""

    resource: str
    action: str
    scope: Scope
    roles: tuple[Role, ...]

    @property
    def needs_caller(self) -> bool:
        """Whether a user's bearer token is needed (public and job-token routes check their own)."""
        return self.scope not in (Scope.public, Scope.job_token)

    def refusal(self, caller: Caller) -> str | None:
        """Why ``caller`` may not do this, or None when it may."""
        things = self.resource.replace("_", " ") + "s"
        if self.scope is Scope.cloud and not caller.operator:
            return f"{things} are managed by the operator organisation"
        if self.scope is Scope.project and caller.project_role not in self.roles:
            if caller.project_role is None:
                needs = " or ".join(r.value for r in self.roles)
                return f"no role in project {caller.project!r}; {things} there need {needs}"
            return (f"role {caller.project_role.value!r} may not {self.action} {things}; needs "
                    f"{' or '.join(r.value for r in self.roles)} in project {caller.project!r}")
        if self.scope in (Scope.organisation, Scope.cloud) and caller.role not in self.roles:
            where = "the operator organisation" if self.scope is Scope.cloud else "the organisation"
            return (f"role {caller.role.value!r} may not {self.action} {things}; needs "
                    f"{' or '.join(r.value for r in self.roles)} in {where}")
        return None


S = Scope
# (resource, action, scope, roles). Actions are read, create, update, delete; what each route
# maps to is in its module. Readers read; members also create and change; admins also delete
# flavors and manage the organisation's users.
TABLE: tuple[Rule, ...] = tuple(Rule(*row) for row in (
    ("session", "create", S.public, NOBODY),           # POST /login
    ("session", "delete", S.own, ANYONE),              # POST /logout: the token it is sent with
    ("account", "read", S.own, ANYONE),                # GET /me
    ("account", "update", S.own, ANYONE),              # POST /me/password
    ("flavor", "read", S.organisation, ANYONE),
    ("flavor", "create", S.organisation, WRITERS),
    ("flavor", "delete", S.organisation, ADMINS),
    ("image", "read", S.project, ANYONE),              # metadata and bytes
    ("image", "create", S.project, WRITERS),
    ("image", "update", S.project, WRITERS),           # upload the bytes of a queued image
    ("image", "delete", S.project, WRITERS),
    ("agent_image", "read", S.job_token, NOBODY),      # a hypervisor's download, with its job's token
    ("agent_image", "update", S.job_token, NOBODY),    # a hypervisor's capture upload, likewise
    ("ssh_key", "read", S.project, ANYONE),
    ("ssh_key", "create", S.project, WRITERS),
    ("ssh_key", "delete", S.project, WRITERS),
    ("instance", "read", S.project, ANYONE),           # and the VNC address; watching the console
    ("instance", "create", S.project, WRITERS),
    ("instance", "update", S.project, WRITERS),        # start, stop, reboot, resize, rebuild, capture,
                                                       # batch actions, typing into the console
    ("instance", "delete", S.project, WRITERS),
    ("job", "read", S.project, ANYONE),
    ("vpc", "read", S.project, ANYONE),
    ("vpc", "create", S.project, WRITERS),
    ("vpc", "delete", S.project, ADMINS),
    ("subnet", "read", S.project, ANYONE),
    ("subnet", "create", S.project, WRITERS),
    ("subnet", "delete", S.project, ADMINS),
    ("port", "read", S.project, ANYONE),
    ("port", "create", S.project, WRITERS),
    ("port", "update", S.project, WRITERS),
    ("port", "delete", S.project, ADMINS),
    ("external_network", "read", S.organisation, ANYONE),  # shared: every organisation uses them
    ("external_network", "create", S.cloud, ADMINS),
    ("external_network", "delete", S.cloud, ADMINS),
    ("router", "read", S.project, ANYONE),
    ("router", "create", S.project, WRITERS),
    ("router", "update", S.project, WRITERS),     # add or remove a subnet, set or clear the gateway
    ("router", "delete", S.project, ADMINS),
    ("floating_ip", "read", S.project, ANYONE),
    ("floating_ip", "create", S.project, WRITERS),  # allocate
    ("floating_ip", "update", S.project, WRITERS),  # associate, disassociate
    ("floating_ip", "delete", S.project, WRITERS),  # release
    ("security_group", "read", S.project, ANYONE),
    ("security_group", "create", S.project, WRITERS),
    ("security_group", "update", S.project, WRITERS),  # its rules
    ("security_group", "delete", S.project, ADMINS),
    ("volume", "read", S.project, ANYONE),             # and its snapshots and attachment
    ("volume", "create", S.project, WRITERS),
    ("volume", "update", S.project, WRITERS),          # attach, detach, extend, snapshot
    ("volume", "delete", S.project, ADMINS),           # the volume, or one of its snapshots
    ("user", "read", S.organisation, ANYONE),          # who is in the organisation, with which role
    ("user", "create", S.organisation, ADMINS),
    ("user", "delete", S.organisation, ADMINS),
    ("membership", "create", S.organisation, ADMINS),  # an existing user joins the organisation
    ("membership", "update", S.organisation, ADMINS),  # change a member's role
    ("membership", "delete", S.organisation, ADMINS),
    ("project", "read", S.organisation, ANYONE),       # those the caller holds a role on
    ("project", "create", S.organisation, ADMINS),
    ("project", "delete", S.organisation, ADMINS),     # an empty one, not the default
    ("project_role", "read", S.organisation, ANYONE),  # a project's own role holders
    ("project_role", "update", S.project, ADMINS),     # grant or change a user's role on a project: its
    ("project_role", "delete", S.project, ADMINS),     # admins (acting in it) or the organisation's
    ("group", "read", S.organisation, ANYONE),         # the organisation's groups, their members and roles
    ("group", "create", S.organisation, ADMINS),
    ("group", "update", S.organisation, ADMINS),       # add or remove users, grant or revoke its roles
    ("group", "delete", S.organisation, ADMINS),
    ("directory_group", "read", S.organisation, ANYONE),   # which directory groups map onto local groups
    ("directory_group", "create", S.organisation, ADMINS),  # map one (applied at each sign-in)
    ("directory_group", "delete", S.organisation, ADMINS),
    ("quota", "read", S.project, ANYONE),              # the project's usage and limits, the org's ceiling
    ("quota", "update", S.cloud, ADMINS),              # operators set a project's or an organisation's limits
    ("hypervisor", "read", S.cloud, ANYONE),
    ("hypervisor", "update", S.cloud, ADMINS),         # enable, disable, ratios, drain, undrain
    ("hypervisor", "delete", S.cloud, ADMINS),
    ("organisation", "read", S.cloud, ANYONE),
    ("organisation", "create", S.cloud, ADMINS),
    ("organisation", "delete", S.cloud, ADMINS),
    ("directory", "read", S.cloud, ANYONE),           # an organisation's LDAP or OpenID settings, no secret
    ("directory", "update", S.cloud, ADMINS),         # configure them (the LDAP bind password: write-only)
    ("directory", "delete", S.cloud, ADMINS),
    ("app_credential", "read", S.own, ANYONE),         # your own, in the organisation the token acts in
    ("app_credential", "create", S.own, ANYONE),       # with a role no higher than yours (services/credentials.py)
    ("app_credential", "delete", S.own, ANYONE),       # revoke
    ("audit_event", "read", S.organisation, ADMINS),  # the organisation's trail (operators: everyone's)
))
POLICY: dict[tuple[str, str], Rule] = {(rule.resource, rule.action): rule for rule in TABLE}
assert len(POLICY) == len(TABLE), "a (resource, action) appears twice in the policy table"


def rule_for(resource: str, action: str) -> Rule:
    """The rule of (resource, action); KeyError, at import of the route, when there is none."""
    try:
        return POLICY[(resource, action)]
    except KeyError:
        raise KeyError(f"no policy entry for ({resource!r}, {action!r}): add it to api/policy.py TABLE") from None


def decide(caller: Caller, resource: str, action: str) -> None:
    """Raise Forbidden, naming the role needed, unless ``caller`` may do ``action`` on ``resource``."""
    why = rule_for(resource, action).refusal(caller)
    if why is not None:
        raise Forbidden(why)


def allows(caller: Caller, resource: str, action: str) -> bool:
    """Whether ``caller`` may do ``action`` on ``resource`` (for a choice inside a route, such as
    whether what a console's watcher types is passed on)."""
    return rule_for(resource, action).refusal(caller) is None


def _dependency(rule: Rule) -> Any:
    # async: it does no I/O (but for a refusal's audit row), and FastAPI would run a plain ``def``
    # in its thread pool, a hop that cost more than the decision on every request (issue 15).
    async def authorise(request: Request, caller: CurrentUser) -> None:
        why = rule.refusal(caller)
        if why is not None:
            await audit.refused(request, 403)  # its audit row before its answer (api/audit.py)
            raise Forbidden(why)

    authorise.__name__ = f"authorise_{rule.resource}_{rule.action}"
    return Depends(authorise)


def allow(resource: str, action: str, *, responses: dict[int | str, dict[str, Any]] | None = None,
          openapi_extra: dict[str, Any] | None = None, dependencies: list[Any] | None = None) -> dict[str, Any]:
    """The route decorator's keyword arguments for the policy entry (resource, action): the
    dependency that decides, and the entry in the OpenAPI document; ``responses``,
    ``openapi_extra`` and ``dependencies`` of the route's own are merged in."""
    rule = rule_for(resource, action)
    roles = [r.value for r in rule.roles]
    extra = {"x-required-role": roles,
             "x-policy": {"resource": resource, "action": action, "scope": rule.scope.value}}
    merged: dict[int | str, dict[str, Any]] = dict(responses or {})
    if rule.needs_caller:
        merged.setdefault(401, {"model": ErrorResponse})
    if rule.scope in ROLE_SCOPES:
        where = {Scope.cloud: "the operator organisation", Scope.organisation: "the organisation the token acts in",
                 Scope.project: "the project the request acts in (its organisation's role counts there)"}[rule.scope]
        merged[403] = {"model": ErrorResponse,
                       "description": f"Forbidden unless the caller is {' or '.join(roles)} in {where}"}
    own = [_dependency(rule)] if rule.needs_caller else []
    return {"responses": merged, "openapi_extra": {**(openapi_extra or {}), **extra},
            "dependencies": [*own, *(dependencies or [])]}


# Routes that are not GET yet change nothing, so a reader may call them: each named here, so that
# a new one is a decision, not an accident.
READING_POSTS = {
    ("post", "/api/v1/instances/{instance_id}/console/ticket"),  # a ticket to watch the console
}


def unpoliced(openapi: dict[str, Any]) -> list[str]:
    """Every operation of an OpenAPI document without a policy entry, or whose entry disagrees
    with the table, or that changes something yet lets a reader do it: ``["GET /api/v1/x: why"]``."""
    problems = []
    for path, operations in openapi.get("paths", {}).items():
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            found = operation.get("x-policy")
            if not isinstance(found, dict):
                problems.append(f"{where}: no x-policy (declare the route with **allow(resource, action))")
                continue
            rule = POLICY.get((found.get("resource"), found.get("action")))  # type: ignore[arg-type]
            if rule is None or found.get("scope") != rule.scope.value:
                problems.append(f"{where}: {found} is not an entry of the policy table")
            elif operation.get("x-required-role") != [r.value for r in rule.roles]:
                problems.append(f"{where}: x-required-role disagrees with the table")
            elif (method != "get" and (method, path) not in READING_POSTS
                  and rule.scope in ROLE_SCOPES and Role.reader in rule.roles):
                problems.append(f"{where}: changes something, yet a reader may do it")
    return problems
