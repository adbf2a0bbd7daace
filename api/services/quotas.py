"""Quotas, enforced (issue 14): per project, and an organisation's ceiling over all its projects.

There is no usage table that could drift: what a project uses is counted from the resources'
own rows (``COUNTERS``), in the transaction that creates the resource, after locking the
organisation's row (PostgreSQL: ``SELECT ... FOR UPDATE``; SQLite's writers take turns, each
in a ``BEGIN IMMEDIATE`` transaction). Two creates of one organisation therefore count one
after the other, and a concurrent burst cannot exceed a limit: the second counts the first's
rows once it has committed. ``charge`` is called by every create (and growth) with what it adds,
before anything is written; it raises QuotaExceeded (409) naming the quota, the limit, the usage
and the project or organisation.

A key without a limit is unlimited. Every key has its counter; a resource added later joins
with ``register``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, delete, func, select
from sqlalchemy.orm import Session

from cloudland.errors import InvalidRequest, NotFound, QuotaExceeded
from cloudland_api.db import for_change
from cloudland_api.models import (
    ExternalIp, Instance, Organisation, OrganisationQuota, Port, Project, ProjectQuota, SecurityGroup, Volume, Vpc
)
from cloudland_api.models.routers import FLOATING
from cloudland_api.services.identity import Caller

log = logging.getLogger(__name__)

KEYS = ("instances", "vcpus", "memory_mib", "volumes", "volume_gib", "networks", "ports", "floating_ips",
        "security_groups")


@dataclass(frozen=True)
class Counter:
    """How one quota key is counted: ``amount`` (a count or a sum) over ``model``'s rows that match
    ``live``, within one project or one organisation."""

    model: Any
    amount: Callable[[Any], ColumnElement[Any]]
    live: Callable[[Any], ColumnElement[bool]] | None = None

    def used(self, session: Session, *, project_id: int | None = None, org_id: int | None = None) -> int:
        model = self.model
        where = [model.project_id == project_id] if project_id is not None else [model.org_id == org_id]
        if self.live is not None:
            where.append(self.live(model))
        return int(session.scalar(select(func.coalesce(self.amount(model), 0)).where(*where)) or 0)


_count = lambda model: func.count(model.id)  # noqa: E731
_alive = lambda model: model.status != "deleted"  # noqa: E731
COUNTERS: dict[str, Counter] = {
    "instances": Counter(Instance, _count, _alive),
    "vcpus": Counter(Instance, lambda m: func.sum(m.vcpus), _alive),
    "memory_mib": Counter(Instance, lambda m: func.sum(m.memory_mib), _alive),
    "volumes": Counter(Volume, _count),
    "volume_gib": Counter(Volume, lambda m: func.sum(m.size_gib)),
    "networks": Counter(Vpc, _count),  # a VPC is a tenant network
    "ports": Counter(Port, _count),
    "floating_ips": Counter(ExternalIp, _count, lambda m: m.kind == FLOATING),  # not routers' SNAT addresses
    "security_groups": Counter(SecurityGroup, _count),  # the default group counts: a limit of 0 still has it
}


def register(key: str, counter: Counter) -> None:
    """Count quota key ``key`` (one of KEYS) with ``counter``: how a new resource joins quotas."""
    if key not in KEYS:
        raise KeyError(f"{key!r} is not a quota key (services/quotas.py KEYS)")
    COUNTERS[key] = counter


def _limits(session: Session, project_id: int, org_id: int) -> tuple[dict[str, int], dict[str, int]]:
    project = dict(session.execute(select(ProjectQuota.resource, ProjectQuota.hard_limit)
                                   .where(ProjectQuota.project_id == project_id)).all())
    org = dict(session.execute(select(OrganisationQuota.resource, OrganisationQuota.hard_limit)
                               .where(OrganisationQuota.org_id == org_id)).all())
    return project, org


def project_of(session: Session, caller: Caller) -> int:
    """The project the caller's request acts in (its organisation's default one if it names none)."""
    if caller.project_id is not None:
        return caller.project_id
    found = session.scalar(select(Project.id).where(Project.org_id == caller.org_id, Project.is_default.is_(True)))
    if found is None:
        raise NotFound(f"organisation {caller.org_id} has no default project")
    return found


def charge(session: Session, caller: Caller, **wants: int) -> None:
    """Check that the caller's project and organisation have room for ``wants`` (key → amount
    added), holding the organisation's lock until the caller's transaction ends (the module's
    docstring); QuotaExceeded naming the first quota that has none."""
    unknown = set(wants) - set(KEYS)
    assert not unknown, f"not quota keys: {sorted(unknown)}"
    session.execute(for_change(select(Organisation.id).where(Organisation.id == caller.org_id)))
    project_id = project_of(session, caller)
    project_limits, org_limits = _limits(session, project_id, caller.org_id)
    for key, amount in wants.items():
        if amount <= 0 or key not in COUNTERS:
            continue
        for limit, used, where in (
            (project_limits.get(key), lambda: COUNTERS[key].used(session, project_id=project_id),
             f"project {caller.project or project_id!r}"),
            (org_limits.get(key), lambda: COUNTERS[key].used(session, org_id=caller.org_id),
             f"organisation {caller.organisation or caller.org_id!r}"),
        ):
            if limit is None:
                continue
            now = used()
            if now + amount > limit:
                log.info("event=quota_exceeded org_id=%d project_id=%d quota=%s limit=%d used=%d wanted=%d",
                         caller.org_id, project_id, key, limit, now, amount)
                raise QuotaExceeded(f"quota {key} of {where} exceeded: limit {limit}, {now} used, {amount} "
                                    f"more asked (an operator raises it: cloudland quota set)")


def usage(session: Session, project: Project) -> list[dict[str, Any]]:
    """Every quota key of ``project``: used and limit, in the project and in its organisation."""
    project_limits, org_limits = _limits(session, project.id, project.org_id)
    lines = []
    for key in KEYS:
        counter = COUNTERS.get(key)
        lines.append({"resource": key,
                      "used": counter.used(session, project_id=project.id) if counter else 0,
                      "limit": project_limits.get(key),
                      "organisation_used": counter.used(session, org_id=project.org_id) if counter else 0,
                      "organisation_limit": org_limits.get(key)})
    return lines


def _checked(limits: dict[str, int | None]) -> dict[str, int | None]:
    unknown = sorted(set(limits) - set(KEYS))
    if unknown:
        raise InvalidRequest(f"not quota keys: {', '.join(unknown)} (keys: {', '.join(KEYS)})")
    return limits


def set_project_limits(session: Session, project_id: int, limits: dict[str, int | None]) -> Project:
    """Set (or, with None, remove) limits of project ``project_id`` of any organisation (operators)."""
    project = session.get(Project, project_id)
    if project is None:
        raise NotFound(f"project {project_id} not found")
    for key, limit in _checked(limits).items():
        session.execute(delete(ProjectQuota).where(ProjectQuota.project_id == project_id, ProjectQuota.resource == key))
        if limit is not None:
            session.add(ProjectQuota(project_id=project_id, resource=key, hard_limit=limit))
    session.commit()
    log.info("event=project_quota_set project_id=%d limits=%s", project_id, limits)
    return project


def set_organisation_limits(session: Session, org_id: int, limits: dict[str, int | None]) -> dict[str, Any]:
    """Set (or, with None, remove) organisation ``org_id``'s ceilings (operators); its limits and usage."""
    if session.get(Organisation, org_id) is None:
        raise NotFound(f"organisation {org_id} not found")
    for key, limit in _checked(limits).items():
        session.execute(delete(OrganisationQuota).where(OrganisationQuota.org_id == org_id,
                                                        OrganisationQuota.resource == key))
        if limit is not None:
            session.add(OrganisationQuota(org_id=org_id, resource=key, hard_limit=limit))
    session.commit()
    log.info("event=organisation_quota_set org_id=%d limits=%s", org_id, limits)
    _, org_limits = _limits(session, 0, org_id)
    return {"org_id": org_id, "limits": {key: org_limits.get(key) for key in KEYS},
            "used": {key: c.used(session, org_id=org_id) for key, c in COUNTERS.items()}}
