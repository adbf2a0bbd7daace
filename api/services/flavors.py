"""Flavors: the VM sizes an organisation offers (tenant-scoped, ``crud``)."""

from __future__ import annotations

import logging

from sqlalchemy import RowMapping
from sqlalchemy.orm import Session

from cloudland_api.models import Flavor
from cloudland_api.schemas import FlavorCreate, FlavorPublic
from cloudland_api.services import crud
from cloudland_api.services.identity import Caller

log = logging.getLogger(__name__)


def list_flavors(session: Session, caller: Caller, limit: int, after: str | None) -> tuple[list[RowMapping], str | None]:
    """One page of the caller's organisation's flavors by id, and the next page's cursor; the
    flavors as rows of FlavorPublic's columns (crud "hot reads as rows")."""
    return crud.page_rows(session, Flavor, FlavorPublic, caller, limit, after, "flavors", lambda: [], {})


def get_flavor(session: Session, caller: Caller, ref: int | str) -> Flavor:
    """The caller's organisation's flavor by id or name, or NotFound."""
    return crud.get(session, Flavor, caller, ref, "flavor")


def create_flavor(session: Session, caller: Caller, spec: FlavorCreate) -> Flavor:
    """Create a flavor in the caller's organisation (admin or member)."""
    flavor = crud.insert_named(session, Flavor(org_id=caller.org_id, **spec.model_dump()), "flavor")
    log.info("event=flavor_created org_id=%d flavor_id=%d user_id=%d", caller.org_id, flavor.id, caller.user_id)
    return flavor


def delete_flavor(session: Session, caller: Caller, flavor_id: int) -> None:
    """Delete the caller's organisation's flavor ``flavor_id`` (admin only)."""
    flavor = get_flavor(session, caller, flavor_id)
    crud.delete(session, flavor, caller, "flavor")
