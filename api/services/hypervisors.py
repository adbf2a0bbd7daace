"""Hypervisors, apart from HTTP: listing and settings, drain and removal, and what a host the
tree no longer has means for the VMs on it.

A hypervisor's ``state``:

    up       its leaf rank is OK; it takes new VMs when also enabled and not draining
    down     its leaf rank is not OK: jobs for it wait and are retried; up again with the leaf
    gone     a ready tree has no such hypervisor (restarted with fewer, or the host taken out)
    removed  the operator removed it: a tombstone row, never placed on again, whose reports the
             reconciler ignores, so that it cannot come back by itself

The observer (reconcile/observer.py) writes up, down and gone; ``remove`` writes removed. Nothing sent to
a gone or removed hypervisor can arrive, and no domain of it can be cleaned: deleting one of
its VMs ends the record at once (instances.py), and every other action is a Conflict saying so.

Only the operator organisation sees hypervisors; only its admins change them (api/policy.py
decides both, before any row is read, so tenants cannot probe ids).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from sqlalchemy import ColumnElement, Row, func, select
from sqlalchemy.orm import Session, sessionmaker

from cloudland.client import RootClient
from cloudland.errors import CloudLandError, Conflict
from cloudland_api.models import Hypervisor, Instance, Organisation
from cloudland_api.services import crud
from cloudland_api.services.identity import Caller

log = logging.getLogger(__name__)

LOST = ("gone", "removed")  # states whose VMs cannot be reached through the tree
SHOWN_REMAINING = 10        # VMs a refused removal names (the drain answer lists them all)


# -- hosts the tree no longer has -----------------------------------------------------------


def lost_reason(hypervisor_id: int, state: str) -> str:
    """Why nothing can be sent to a gone or removed hypervisor."""
    if state == "removed":
        return f"hypervisor {hypervisor_id} was removed"
    return f"hypervisor {hypervisor_id} is gone (the tree no longer has it)"


def nothing_to_clean(hypervisor_id: int, state: str) -> str:
    """The note a delete of a VM on a gone or removed hypervisor ends with."""
    return f"{lost_reason(hypervisor_id, state)}: nothing was sent and nothing was left to clean there"


def unreachable(what: str, hypervisor_id: int, state: str) -> Conflict:
    """The refusal of ``what`` ("start instance 5 (web-1)") on a gone or removed hypervisor."""
    return Conflict(f"cannot {what}: {lost_reason(hypervisor_id, state)}; its VMs can only be deleted")


def lost_hosts(session: Session, ids: Iterable[int | None]) -> dict[int | None, str]:
    """The gone or removed hypervisors among ``ids``, with their state; one query. (Keyed by
    ``int | None`` so that an unplaced instance's ``hypervisor_id`` looks up to None.)"""
    wanted = {i for i in ids if i is not None}
    if not wanted:
        return {}
    rows = session.execute(select(Hypervisor.id, Hypervisor.state)
                           .where(Hypervisor.id.in_(wanted), Hypervisor.state.in_(LOST)))
    return {hypervisor_id: state for hypervisor_id, state in rows}


# -- the operator's view --------------------------------------------------------------------


def list_hypervisors(session: Session, caller: Caller, limit: int, after: str | None,
                     include_removed: bool = False) -> tuple[list[Hypervisor], str | None]:
    """One page of hypervisors by id and the next page's cursor; removed ones only with ``include_removed``.

    Hypervisors belong to no tenant, so this pages with ``crud.keyset``, the scheme under ``crud.page``.
    """
    shown = [] if include_removed else [Hypervisor.state != "removed"]
    return crud.keyset(session, select(Hypervisor).where(*shown), [Hypervisor.id], limit, after)


def get_hypervisor(session: Session, caller: Caller, hypervisor_id: int, *, lock: bool = False) -> Hypervisor:
    """Hypervisor ``hypervisor_id`` (removed ones too), or NotFound.

    ``lock``: for drain and removal. A placement claims with an UPDATE of this row, so holding
    its lock makes a placement in flight commit first (and be counted) or wait and then find
    the host closed to it (PostgreSQL; SQLite's writers take turns anyway).
    """
    hypervisor: Hypervisor = crud.one(session, select(Hypervisor).where(Hypervisor.id == hypervisor_id),
                                      f"hypervisor {hypervisor_id} not found (not reported by the tree yet?)", lock=lock)
    return hypervisor


def _changeable(session: Session, caller: Caller, hypervisor_id: int) -> Hypervisor:
    """The hypervisor an operator admin may change: locked, and not removed."""
    hypervisor = get_hypervisor(session, caller, hypervisor_id, lock=True)
    if hypervisor.state == "removed":
        raise Conflict(f"hypervisor {hypervisor_id} was removed: it takes no VMs and no more changes")
    return hypervisor


def update_hypervisor(session: Session, caller: Caller, hypervisor_id: int, changes: dict[str, Any]) -> Hypervisor:
    """Enable/disable a hypervisor or change its overcommit ratios (operator admins only)."""
    hypervisor = _changeable(session, caller, hypervisor_id)
    for key, value in changes.items():
        setattr(hypervisor, key, value)
    session.commit()
    log.info("event=hypervisor_updated hypervisor=%d changes=%s user_id=%d", hypervisor_id, changes, caller.user_id)
    return hypervisor


def _live_on(hypervisor_id: int) -> tuple[ColumnElement[bool], ...]:
    """SQL: the instance is placed on the hypervisor and not deleted (it holds a claim there)."""
    return Instance.hypervisor_id == hypervisor_id, Instance.status != "deleted"


def remaining(session: Session, hypervisor_id: int, limit: int | None = None) -> list[Row[Any]]:
    """The VMs placed on the hypervisor that are not deleted, of every organisation, by id:
    ``(id, name, org_id, organisation, status)``."""
    rows = session.execute(
        select(Instance.id, Instance.name, Instance.org_id, Organisation.name.label("organisation"), Instance.status)
        .join(Organisation, Organisation.id == Instance.org_id)
        .where(*_live_on(hypervisor_id)).order_by(Instance.id).limit(limit)
    )
    return list(rows)


def drain(session: Session, caller: Caller, hypervisor_id: int) -> tuple[Hypervisor, list[Row[Any]]]:
    """Place no new VMs on the hypervisor from now on (again: a second drain changes nothing),
    and list the VMs that remain on it. Moving them is not done yet: migration comes later."""
    hypervisor = _changeable(session, caller, hypervisor_id)
    was = hypervisor.draining
    hypervisor.draining = True
    vms = remaining(session, hypervisor_id)  # under the row lock: no placement lands after this
    session.commit()
    if not was:
        log.warning("event=hypervisor_draining hypervisor=%d remaining=%d user_id=%d", hypervisor_id, len(vms),
                    caller.user_id)
    return hypervisor, vms


def undrain(session: Session, caller: Caller, hypervisor_id: int) -> Hypervisor:
    """Let placements on the hypervisor resume (if it is also up and enabled)."""
    hypervisor = _changeable(session, caller, hypervisor_id)
    if hypervisor.draining:
        hypervisor.draining = False
        log.warning("event=hypervisor_undrained hypervisor=%d user_id=%d", hypervisor_id, caller.user_id)
    session.commit()
    return hypervisor


def remove(session: Session, caller: Caller, hypervisor_id: int) -> Hypervisor:
    """Make the hypervisor a ``removed`` tombstone; Conflict, naming them, while VMs remain on it.

    The row stays: deleted instances and jobs keep naming it, and its id is never reused for
    placements. Removing it again answers the same tombstone.
    """
    hypervisor = get_hypervisor(session, caller, hypervisor_id, lock=True)
    if hypervisor.state == "removed":
        return hypervisor
    left = remaining(session, hypervisor_id, SHOWN_REMAINING)
    if left:
        total = session.scalar(select(func.count()).select_from(Instance).where(*_live_on(hypervisor_id)))
        total = total or len(left)
        names = ", ".join(f"{vm.name} (instance {vm.id}, {vm.organisation}, {vm.status})" for vm in left)
        more = f" and {total - len(left)} more" if total > len(left) else ""
        vms = f"{total} VM{'s' if total > 1 else ''}"
        raise Conflict(f"hypervisor {hypervisor_id} still has {vms}: {names}{more}; drain it "
                       f"(cloudland hyper drain {hypervisor_id}) and delete or move them first")
    hypervisor.state = "removed"
    session.commit()
    log.warning("event=hypervisor_removed hypervisor=%d user_id=%d", hypervisor_id, caller.user_id)
    return hypervisor


def forget_in_tree(client: RootClient | None, sessions: sessionmaker[Session], hypervisor_id: int) -> None:
    """Have the tree's root forget the host of a removed hypervisor, once every hypervisor that
    host carries is removed (a host leaves the tree whole: proto/README.md §10.4).

    Runs after the removal has committed (the API's record is the tombstone either way: the
    reconciler ignores reports for a removed id). ``client`` is None without a tree.
    """
    if client is None:
        return
    try:
        host = next((h for h in client.hosts().hosts if hypervisor_id in h.hypervisors), None)
        if host is None:
            log.info("event=hypervisor_forget_skipped hypervisor=%d reason=no host of the tree holds it",
                     hypervisor_id)
            return
        with sessions() as session:
            removed = set(session.scalars(select(Hypervisor.id).where(
                Hypervisor.id.in_(list(host.hypervisors)), Hypervisor.state == "removed")))
        left = sorted(set(host.hypervisors) - removed)
        if left:
            log.info("event=hypervisor_forget_deferred hypervisor=%d host=%s until_removed=%s", hypervisor_id,
                     host.name, left)
            return
        client.remove_host(host.name)
        log.warning("event=host_removed_from_tree host=%s hypervisors=%s", host.name, sorted(host.hypervisors))
    except CloudLandError as exc:  # the tombstone stands; an operator can `cloudland cluster remove` it
        log.warning("event=hypervisor_forget_failed hypervisor=%d error=%s", hypervisor_id, exc)
