"""``/api/v1/vpcs``: the organisation's VPCs (tenant networks' routing domains, issue 11)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status
from starlette.requests import Request
from starlette.responses import Response

from cloudland_api import rowjson
from cloudland_api.deps import CurrentUser, PageAfter, PageLimit, SessionDep, SettingsDep, read
from cloudland_api.policy import allow
from cloudland_api.schemas import MAX_ID, ErrorResponse, VpcCreate, VpcList, VpcPublic
from cloudland_api.services import networks

router = APIRouter(prefix="/vpcs", tags=["networks"],
                   responses={401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}})
VpcId = Annotated[int, Path(ge=1, le=MAX_ID, description="VPC id")]
_CHANGES = {403: {"model": ErrorResponse}, 409: {"model": ErrorResponse}}


@router.get("", response_model=VpcList, **allow("vpc", "read"))
async def list_vpcs(request: Request, caller: CurrentUser, limit: PageLimit = 50, after: PageAfter = None) -> Response:
    """One page of the organisation's VPCs, by id; pass ``next_after`` back as ``after``."""
    rows, next_after = await read(request, networks.list_vpcs, caller, limit, after)
    return rowjson.page(VpcList, rows, limit=limit, next_after=next_after)


@router.post("", status_code=status.HTTP_201_CREATED, **allow("vpc", "create", responses=_CHANGES))
def create_vpc(body: VpcCreate, session: SessionDep, caller: CurrentUser, settings: SettingsDep) -> VpcPublic:
    """Create a VPC (admin or member)."""
    return VpcPublic.model_validate(networks.create_vpc(session, caller, body, settings))


@router.get("/{vpc_id}", **allow("vpc", "read"))
def get_vpc(vpc_id: VpcId, session: SessionDep, caller: CurrentUser) -> VpcPublic:
    """One VPC of the organisation."""
    return VpcPublic.model_validate(networks.get_vpc(session, caller, vpc_id))


@router.delete("/{vpc_id}", status_code=status.HTTP_204_NO_CONTENT, **allow("vpc", "delete", responses=_CHANGES))
def delete_vpc(vpc_id: VpcId, session: SessionDep, caller: CurrentUser) -> None:
    """Delete a VPC and its subnets (admin); 409 while it has ports."""
    networks.delete_vpc(session, caller, vpc_id)
