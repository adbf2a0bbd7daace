"""``/api/v1/flavors``: VM sizes, scoped to the caller's organisation."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status
from starlette.requests import Request
from starlette.responses import Response

from cloudland_api import rowjson
from cloudland_api.services import flavors as flavor_service
from cloudland_api.deps import CurrentUser, PageAfter, PageLimit, SessionDep, read
from cloudland_api.policy import allow
from cloudland_api.schemas import MAX_ID, ErrorResponse, FlavorCreate, FlavorList, FlavorPublic

router = APIRouter(
    prefix="/flavors",
    tags=["flavors"],
    responses={401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}},
)
FlavorId = Annotated[int, Path(ge=1, le=MAX_ID, description="Flavor id")]


@router.get("", response_model=FlavorList, **allow("flavor", "read"))
async def list_flavors(
    request: Request,
    caller: CurrentUser,
    limit: PageLimit = 50,
    after: PageAfter = None,
) -> Response:
    """One page of the organisation's flavors, by id; pass ``next_after`` back as ``after``."""
    flavors, next_after = await read(request, flavor_service.list_flavors, caller, limit, after)
    return rowjson.page(FlavorList, flavors, limit=limit, next_after=next_after)


@router.post("", status_code=status.HTTP_201_CREATED,
             **allow("flavor", "create", responses={409: {"model": ErrorResponse}}))
def create_flavor(body: FlavorCreate, session: SessionDep, caller: CurrentUser) -> FlavorPublic:
    """Create a flavor (admin or member)."""
    return FlavorPublic.model_validate(flavor_service.create_flavor(session, caller, body))


@router.get("/{flavor_id}", **allow("flavor", "read"))
def get_flavor(flavor_id: FlavorId, session: SessionDep, caller: CurrentUser) -> FlavorPublic:
    """One flavor of the organisation."""
    return FlavorPublic.model_validate(flavor_service.get_flavor(session, caller, flavor_id))


@router.delete("/{flavor_id}", status_code=status.HTTP_204_NO_CONTENT, **allow("flavor", "delete"))
def delete_flavor(flavor_id: FlavorId, session: SessionDep, caller: CurrentUser) -> None:
    """Delete a flavor (admin only)."""
    flavor_service.delete_flavor(session, caller, flavor_id)
