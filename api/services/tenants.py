"""Managing tenants: operators create and delete organisations; an organisation's admins create
and delete its users, let existing users join, change their roles and remove them.

Who may call what is api/policy.py's. What is refused here, with a 409 that says what to do:

- an organisation, or a user, whose name is taken; deleting the operator organisation, or one
  that still has instances, images or unfinished jobs (they go first: nothing is left
  running or stored behind a deleted tenant);
- leaving an organisation without an admin (demoting, removing or deleting its last one), so
  that an organisation can always be managed;
- deleting a user who is also in another organisation (remove the membership instead: one
  organisation's admins cannot delete another's user), and removing a user's only membership
  (delete the user instead: a user in no organisation could never be managed again).

Every change to an organisation's memberships first locks the organisation's row, so two
admins demoting each other at once cannot both succeed (PostgreSQL; SQLite's writers take
turns anyway). A removed membership, like a password change, ends every token of that user
(identity.end_tokens).
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import delete as sql_delete
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload

from cloudland.errors import Conflict, NotFound
from cloudland_api.db import for_change
from cloudland_api.models import TERMINAL, Image, Instance, Job, Membership, Organisation, Role, SecurityRule, User
from cloudland_api.schemas import MembershipCreate, OrganisationCreate, UserCreate
from cloudland_api.security import hash_password
from cloudland_api.services import crud, groups
from cloudland_api.services.identity import Caller, end_tokens

log = logging.getLogger(__name__)


# -- organisations (operators) --------------------------------------------------------------


def list_organisations(session: Session, limit: int, after: str | None) -> tuple[list[Organisation], str | None]:
    """One page of every organisation by id, and the next page's cursor."""
    return crud.keyset(session, select(Organisation), [Organisation.id], limit, after)


def _commit_unique(session: Session, taken: str) -> None:
    """Commit; a unique constraint that fires (a create raced past our check) is Conflict ``taken``."""
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict(taken) from exc


def _check_username_free(session: Session, username: str) -> str:
    taken = f"username {username!r} is already taken (users are named cloud-wide)"
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise Conflict(taken)
    return taken


def _user_named(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise NotFound(f"user {username!r} not found")
    return user


def create_organisation(session: Session, caller: Caller, spec: OrganisationCreate) -> Organisation:
    """A new organisation and its first admin: a new user when ``spec.admin.password`` is given,
    else the existing user of that name."""
    taken = f"organisation name {spec.name!r} is already used"
    if session.scalar(select(Organisation.id).where(Organisation.name == spec.name)) is not None:
        raise Conflict(taken)
    if spec.admin.password is not None:
        taken = " or ".join([taken, _check_username_free(session, spec.admin.username)])
        admin = User(username=spec.admin.username, password_hash=hash_password(spec.admin.password))
    else:
        admin = _user_named(session, spec.admin.username)
    org = Organisation(name=spec.name)
    session.add_all([org, admin, Membership(user=admin, org=org, role=Role.admin)])
    _commit_unique(session, taken)
    log.info("event=organisation_created org_id=%d name=%s admin=%s user_id=%d", org.id, org.name,
             admin.username, caller.user_id)
    return org


def _what_remains(session: Session, org_id: int) -> list[str]:
    """What an organisation still holds that its deletion would leave behind, as ``["3 instances"]``."""
    counts = [
        (session.scalar(select(func.count()).select_from(Instance)
                        .where(Instance.org_id == org_id, Instance.status != "deleted")), "instance"),
        (session.scalar(select(func.count()).select_from(Image).where(Image.org_id == org_id)), "image"),
        (session.scalar(select(func.count()).select_from(Job)
                        .where(Job.org_id == org_id, Job.state.not_in(TERMINAL))), "unfinished job"),
    ]
    return [f"{n} {what}{'' if n == 1 else 's'}" for n, what in counts if n]


def delete_organisation(session: Session, caller: Caller, org_id: int) -> None:
    """Delete an empty organisation with its flavors, SSH keys, deleted instances' records, jobs and
    memberships; its users who belong to no other organisation go with it."""
    org: Organisation = crud.one(session, select(Organisation).where(Organisation.id == org_id),
                                 f"organisation {org_id} not found", lock=True)
    if org.operator:
        raise Conflict(f"organisation {org.name!r} is the operator organisation: it cannot be deleted")
    remains = _what_remains(session, org_id)
    if remains:
        raise Conflict(f"organisation {org.name!r} still has {', '.join(remains)}: its instances and images "
                       "must be deleted and its jobs ended first")
    members = list(session.scalars(select(Membership.user_id).where(Membership.org_id == org_id)))
    only_here = list(session.scalars(
        select(User).where(User.id.in_(members))
        .where(~select(Membership.user_id).where(Membership.user_id == User.id, Membership.org_id != org_id)
               .exists())))
    for user in only_here:
        session.delete(user)
    # Its security rules first: a rule names its group as a remote group (RESTRICT), which SQLite
    # checks row by row while the organisation's delete cascades to both (every project has its
    # default group, whose ingress rule names itself).
    session.execute(sql_delete(SecurityRule).where(SecurityRule.org_id == org_id))
    session.delete(org)
    session.commit()
    log.warning("event=organisation_deleted org_id=%d name=%s users_deleted=%d user_id=%d", org_id, org.name,
                len(only_here), caller.user_id)


# -- users and memberships (an organisation's admins) ---------------------------------------


def _lock_org(session: Session, caller: Caller) -> None:
    """Serialise membership changes of the caller's organisation (the module's docstring)."""
    session.scalar(for_change(select(Organisation.id).where(Organisation.id == caller.org_id)))


def _members(caller: Caller) -> Any:
    return (select(Membership).options(joinedload(Membership.user, innerjoin=True))
            .where(Membership.org_id == caller.org_id))


def list_users(session: Session, caller: Caller, limit: int, after: str | None,
               username: str | None = None) -> tuple[list[Membership], str | None]:
    """One page of the organisation's memberships (each with its user) by user id, and the next
    page's cursor; with ``username``, only that user's."""
    query = _members(caller)
    if username is not None:
        query = query.join(User, User.id == Membership.user_id).where(User.username == username)
    return crud.keyset(session, query, [Membership.user_id], limit, after)


def get_user(session: Session, caller: Caller, user_id: int, *, lock: bool = False) -> Membership:
    """The membership of user ``user_id`` in the caller's organisation, or NotFound (users of
    other organisations cannot be probed)."""
    membership: Membership = crud.one(session, _members(caller).where(Membership.user_id == user_id),
                                      f"user {user_id} not found in this organisation", lock=lock)
    return membership


def create_user(session: Session, caller: Caller, spec: UserCreate) -> Membership:
    """A new user, a member of the caller's organisation with ``spec.role``."""
    taken = _check_username_free(session, spec.username)
    user = User(username=spec.username, password_hash=hash_password(spec.password))
    membership = Membership(user=user, org_id=caller.org_id, role=Role(spec.role))
    session.add_all([user, membership])
    _commit_unique(session, taken)
    log.info("event=user_created org_id=%d new_user_id=%d role=%s user_id=%d", caller.org_id, user.id, spec.role,
             caller.user_id)
    return membership


def add_membership(session: Session, caller: Caller, spec: MembershipCreate) -> Membership:
    """The existing user ``spec.username`` joins the caller's organisation with ``spec.role``."""
    user = _user_named(session, spec.username)
    taken = f"user {spec.username!r} is already a member of this organisation"
    if session.get(Membership, (user.id, caller.org_id)) is not None:
        raise Conflict(taken)
    membership = Membership(user=user, org_id=caller.org_id, role=Role(spec.role))
    session.add(membership)
    _commit_unique(session, taken)
    log.info("event=membership_added org_id=%d member_id=%d role=%s user_id=%d", caller.org_id, user.id, spec.role,
             caller.user_id)
    return membership


def _keep_an_admin(session: Session, caller: Caller, membership: Membership, doing: str) -> None:
    """Conflict if ``doing`` would leave the organisation without an admin."""
    if membership.role is not Role.admin:
        return
    admins = session.scalar(select(func.count()).select_from(Membership)
                            .where(Membership.org_id == caller.org_id, Membership.role == Role.admin))
    if (admins or 0) <= 1:
        raise Conflict(f"{membership.user.username!r} is the organisation's last admin: make another user admin "
                       f"before {doing}")


def change_role(session: Session, caller: Caller, user_id: int, role: str) -> Membership:
    """Give the member ``user_id`` another role in the caller's organisation (effective at their
    next request: roles are read on every request)."""
    _lock_org(session, caller)
    membership = get_user(session, caller, user_id, lock=True)
    if membership.role is not Role(role):
        _keep_an_admin(session, caller, membership, f"making them {role}")
        membership.role = Role(role)
    session.commit()
    log.info("event=role_changed org_id=%d member_id=%d role=%s user_id=%d", caller.org_id, user_id, role,
             caller.user_id)
    return membership


def _other_organisations(session: Session, caller: Caller, user_id: int) -> list[str]:
    return list(session.scalars(select(Organisation.name).join(Membership, Membership.org_id == Organisation.id)
                                .where(Membership.user_id == user_id, Membership.org_id != caller.org_id)
                                .order_by(Organisation.name)))


def remove_membership(session: Session, caller: Caller, user_id: int) -> None:
    """The user ``user_id`` leaves the caller's organisation; every token they hold ends."""
    _lock_org(session, caller)
    membership = get_user(session, caller, user_id, lock=True)
    if not _other_organisations(session, caller, user_id):
        raise Conflict(f"this organisation is {membership.user.username!r}'s only one: delete the user instead")
    _keep_an_admin(session, caller, membership, "removing them")
    end_tokens(membership.user)
    groups.leave_organisation(session, user_id, caller.org_id)
    session.delete(membership)
    session.commit()
    log.info("event=membership_removed org_id=%d member_id=%d user_id=%d", caller.org_id, user_id, caller.user_id)


def delete_user(session: Session, caller: Caller, user_id: int) -> None:
    """Delete the user ``user_id``, whose only organisation is the caller's; their tokens end with them."""
    _lock_org(session, caller)
    membership = get_user(session, caller, user_id, lock=True)
    others = _other_organisations(session, caller, user_id)
    if others:
        raise Conflict(f"user {membership.user.username!r} is also a member of {', '.join(others)}: remove their "
                       "membership here instead (DELETE /memberships/{user_id})")
    _keep_an_admin(session, caller, membership, "deleting them")
    session.delete(membership.user)
    session.commit()
    log.warning("event=user_deleted org_id=%d deleted_user_id=%d user_id=%d", caller.org_id, user_id, caller.user_id)
