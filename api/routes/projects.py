"""``/api/v1/projects`` (an organisation's projects and the roles users hold on them) and quotas:
``/quota`` (the project a request acts in), ``/projects/{id}/quota`` and
``/organisations/{id}/quota`` (operators set limits). Rules: services/projects.py, quotas.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from cloudland_api.deps import CurrentUser, PageAfter, PageLimit, SessionDep
from cloudland_api.models import Project, Role
from cloudland_api.policy import allow
from cloudland_api.schemas import (
    MAX_ID,
    ErrorResponse,
    OrganisationQuotaPublic,
    ProjectCreate,
    ProjectList,
    ProjectMemberList,
    ProjectMemberPublic,
    ProjectPublic,
    ProjectRoleGrant,
    QuotaLine,
    QuotaPublic,
    QuotaUpdate,
)
from cloudland_api.services import projects, quotas

router = APIRouter(responses={404: {"model": ErrorResponse}})
ProjectId = Annotated[int, Path(ge=1, le=MAX_ID, description="Project id")]
UserId = Annotated[int, Path(ge=1, le=MAX_ID, description="User id")]
OrgId = Annotated[int, Path(ge=1, le=MAX_ID, description="Organisation id")]
_CONFLICT = {409: {"model": ErrorResponse}}


def project_public(project: Project, role: Role | None) -> ProjectPublic:
    return ProjectPublic(id=project.id, name=project.name, is_default=project.is_default,
                         created_at=project.created_at, role=role)


@router.get("/projects", tags=["projects"], **allow("project", "read"))
def list_projects(session: SessionDep, caller: CurrentUser, limit: PageLimit = 50, after: PageAfter = None
                  ) -> ProjectList:
    """One page of the organisation's projects the caller holds a role on, by id."""
    rows, next_after = projects.page(session, caller, limit, after)
    return ProjectList(items=[project_public(p, r) for p, r in rows], limit=limit, next_after=next_after)


@router.post("/projects", tags=["projects"], status_code=status.HTTP_201_CREATED,
             **allow("project", "create", responses=_CONFLICT))
def create_project(body: ProjectCreate, session: SessionDep, caller: CurrentUser) -> ProjectPublic:
    """Create a project of the organisation."""
    return project_public(projects.create(session, caller, body.name), caller.role)


@router.get("/projects/{project_id}", tags=["projects"], **allow("project", "read"))
def get_project(project_id: ProjectId, session: SessionDep, caller: CurrentUser) -> ProjectPublic:
    """One project, with the caller's role there."""
    return project_public(*projects.show(session, caller, project_id))


@router.delete("/projects/{project_id}", tags=["projects"], status_code=status.HTTP_204_NO_CONTENT,
               **allow("project", "delete", responses=_CONFLICT))
def delete_project(project_id: ProjectId, session: SessionDep, caller: CurrentUser) -> None:
    """Delete an empty project (409 names what it still holds); never the default one."""
    projects.delete(session, caller, project_id)


@router.get("/projects/{project_id}/members", tags=["projects"], **allow("project_role", "read"))
def list_project_members(project_id: ProjectId, session: SessionDep, caller: CurrentUser, limit: PageLimit = 50,
                         after: PageAfter = None) -> ProjectMemberList:
    """One page of the users holding a role on the project itself, by user id."""
    rows, next_after = projects.members(session, caller, project_id, limit, after)
    return ProjectMemberList(items=[ProjectMemberPublic(user_id=r.user_id, username=name, role=r.role)
                                    for r, name in rows], limit=limit, next_after=next_after)


@router.put("/projects/{project_id}/members/{user_id}", tags=["projects"], **allow("project_role", "update"))
def grant_project_role(project_id: ProjectId, user_id: UserId, body: ProjectRoleGrant, session: SessionDep,
                       caller: CurrentUser) -> ProjectMemberPublic:
    """Give a user a role on the project (a user outside the organisation joins it for its
    projects only)."""
    row, username = projects.grant(session, caller, project_id, user_id, Role(body.role))
    return ProjectMemberPublic(user_id=row.user_id, username=username, role=row.role)


@router.delete("/projects/{project_id}/members/{user_id}", tags=["projects"], status_code=status.HTTP_204_NO_CONTENT,
               **allow("project_role", "delete"))
def revoke_project_role(project_id: ProjectId, user_id: UserId, session: SessionDep, caller: CurrentUser) -> None:
    """Remove a user's role on the project (their organisation role, if any, stays)."""
    projects.revoke(session, caller, project_id, user_id)


# -- quotas -----------------------------------------------------------------------------------


def quota_public(session: SessionDep, project: Project) -> QuotaPublic:
    return QuotaPublic(project_id=project.id, project=project.name, org_id=project.org_id,
                       items=[QuotaLine(**line) for line in quotas.usage(session, project)])


@router.get("/quota", tags=["quotas"], **allow("quota", "read"))
def show_quota(session: SessionDep, caller: CurrentUser) -> QuotaPublic:
    """The usage and limits of the project the request acts in, beside its organisation's ceiling."""
    assert caller.project_id is not None
    return quota_public(session, projects.get(session, caller, caller.project_id))


@router.put("/projects/{project_id}/quota", tags=["quotas"], **allow("quota", "update"))
def set_project_quota(project_id: ProjectId, body: QuotaUpdate, session: SessionDep) -> QuotaPublic:
    """Set a project's limits (any organisation's; null: unlimited again)."""
    return quota_public(session, quotas.set_project_limits(session, project_id, body.limits))


@router.put("/organisations/{org_id}/quota", tags=["quotas"], **allow("quota", "update"))
def set_organisation_quota(org_id: OrgId, body: QuotaUpdate, session: SessionDep) -> OrganisationQuotaPublic:
    """Set an organisation's ceilings over all its projects (null: unlimited again)."""
    return OrganisationQuotaPublic(**quotas.set_organisation_limits(session, org_id, body.limits))
