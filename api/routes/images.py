"""``/api/v1/images``: disk images of the caller's organisation, metadata and bytes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.responses import FileResponse
from starlette.responses import Response
from sqlalchemy.orm import Session
from starlette.requests import ClientDisconnect

from cloudland import errors
from cloudland_api import rowjson
from cloudland_api.services import images as image_service
from cloudland_api.deps import CurrentUser, PageAfter, PageLimit, SessionDep, SettingsDep, SigningKeyDep, StreamingSessionDep, SubmitDep, read
from cloudland_api.policy import allow
from cloudland_api.security import UPLOAD_AUDIENCE, decode_image_token
from cloudland_api.schemas import MAX_ID, ErrorResponse, ImageCreate, ImageList, ImagePublic
from cloudland_api.services.identity import Caller
from cloudland_api.settings import ApiSettings

router = APIRouter(
    prefix="/images",
    tags=["images"],
    responses={401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}},
)
ImageId = Annotated[int, Path(ge=1, le=MAX_ID, description="Image id")]
OCTET_STREAM = "application/octet-stream"
ContentType = Annotated[str | None, Header()]
ContentLength = Annotated[int | None, Header(ge=0)]
ExpectedSha256 = Annotated[
    str | None, Header(pattern=r"^[0-9a-fA-F]{64}$", description="Expected SHA-256 (hex) of the bytes")
]
class ImageFile(FileResponse):
    """An image's bytes, read from disk 1 MiB at a time: each chunk is a trip to a worker thread,
    and Starlette's 64 KiB made that trip the cost of a download (bench/image_bench.py)."""

    chunk_size = 1 << 20


_BINARY_BODY = {
    "requestBody": {"required": True, "content": {OCTET_STREAM: {"schema": {"type": "string", "format": "binary"}}}}
}


@router.get("", response_model=ImageList, **allow("image", "read"))
async def list_images(
    request: Request,
    caller: CurrentUser,
    limit: PageLimit = 50,
    after: PageAfter = None,
) -> Response:
    """One page of the organisation's images, by id; pass ``next_after`` back as ``after``."""
    images, next_after = await read(request, image_service.list_images, caller, limit, after)
    return rowjson.page(ImageList, images, limit=limit, next_after=next_after)


@router.post("", status_code=status.HTTP_201_CREATED,
             **allow("image", "create", responses={409: {"model": ErrorResponse}}))
def create_image(body: ImageCreate, session: SessionDep, caller: CurrentUser) -> ImagePublic:
    """Create a ``queued`` image (admin or member); upload its bytes with ``PUT /images/{id}/file``."""
    return ImagePublic.model_validate(image_service.create_image(session, caller, body))


@router.get("/{image_id}", **allow("image", "read"))
def get_image(image_id: ImageId, session: SessionDep, caller: CurrentUser) -> ImagePublic:
    """One image of the organisation."""
    return ImagePublic.model_validate(image_service.get_image(session, caller, image_id))


@router.delete("/{image_id}", status_code=status.HTTP_204_NO_CONTENT,
               **allow("image", "delete", responses={409: {"model": ErrorResponse}}))
def delete_image(image_id: ImageId, session: SessionDep, caller: CurrentUser, settings: SettingsDep,
                 submit: SubmitDep) -> None:
    """Delete an image and its file (admin or member); hypervisors then drop their cached copy
    (an ``evict`` job, committed with the delete)."""
    evict = image_service.delete_image(session, caller, image_id, settings.state_dir)
    if evict is not None:
        submit([evict.id])


async def _body(request: Request, image_id: int) -> AsyncIterator[bytes]:
    """The request body as it arrives, never all of it at once."""
    try:
        async for chunk in request.stream():
            if chunk:
                yield chunk
    except ClientDisconnect as exc:
        # Nobody is left to read a response; this only keeps the log free of a 500.
        raise errors.InvalidRequest(f"upload of image {image_id} aborted: the client disconnected") from exc


@router.put(
    "/{image_id}/file",
    **allow("image", "update", openapi_extra=_BINARY_BODY, responses={
        400: {"model": ErrorResponse}, 409: {"model": ErrorResponse}, 413: {"model": ErrorResponse},
        415: {"model": ErrorResponse},
    }),
)
async def upload_image_file(
    image_id: ImageId,
    request: Request,
    session: StreamingSessionDep,
    caller: CurrentUser,
    settings: SettingsDep,
    content_type: ContentType = None,
    content_length: ContentLength = None,
    x_image_sha256: ExpectedSha256 = None,
) -> ImagePublic:
    """Upload a queued image's bytes as ``application/octet-stream``; the image becomes ``active``.

    The body is streamed to disk (never held in memory) and hashed on the way. With
    ``X-Image-Sha256`` the upload is refused unless the bytes hash to it.
    """
    return await _upload(request, session, caller, image_id, settings, content_type, content_length, x_image_sha256)


@router.put(
    "/{image_id}/upload",
    **allow("agent_image", "update", openapi_extra=_BINARY_BODY, responses={
        400: {"model": ErrorResponse}, 409: {"model": ErrorResponse}, 413: {"model": ErrorResponse},
        415: {"model": ErrorResponse},
    }),
)
async def upload_capture(
    image_id: ImageId,
    request: Request,
    session: StreamingSessionDep,
    settings: SettingsDep,
    key: SigningKeyDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))],
    content_type: ContentType = None,
    content_length: ContentLength = None,
    x_image_sha256: ExpectedSha256 = None,
) -> ImagePublic:
    """A hypervisor's upload of a captured disk into its ``saving`` image, with the upload token
    its capture job carried (``security.issue_image_token``); a user's token is refused.

    The same bytes sent again (a replayed job) are success.
    """
    if credentials is None:
        raise errors.Unauthorized("missing bearer token: send the image upload token of the capture job")
    if decode_image_token(key, credentials.credentials, UPLOAD_AUDIENCE) != image_id:
        raise errors.Unauthorized(f"the upload token is not for image {image_id}")
    return await _upload(request, session, None, image_id, settings, content_type, content_length, x_image_sha256)


async def _upload(request: Request, session: Session, caller: Caller | None, image_id: int, settings: ApiSettings,
                  content_type: str | None, content_length: int | None, sha256: str | None) -> ImagePublic:
    """The body of an octet-stream upload streamed into the image (``image_service.upload_image``)."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != OCTET_STREAM:
        # curl -d / --data-binary default to form encoding: say what to send instead.
        raise errors.UnsupportedMediaType(
            f"image {image_id}: send the bytes with 'Content-Type: {OCTET_STREAM}', got {content_type!r}"
        )
    image = await image_service.upload_image(
        session, caller, image_id, _body(request, image_id), state_dir=settings.state_dir,
        max_bytes=settings.max_image_bytes, declared_size=content_length, expected_sha256=sha256,
    )
    return ImagePublic.model_validate(image)


@router.get(
    "/{image_id}/download",
    response_class=FileResponse,
    **allow("agent_image", "read", responses={200: {"content": {OCTET_STREAM: {}}}, 409: {"model": ErrorResponse}}),
)
def download_for_agent(
    image_id: ImageId,
    session: SessionDep,
    settings: SettingsDep,
    key: SigningKeyDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))],
) -> FileResponse:
    """The bytes of an active image for a hypervisor's image cache, with the token its job carried.

    The token (``security.issue_image_token``) names this one image; a user's token is refused.
    """
    if credentials is None:
        raise errors.Unauthorized("missing bearer token: send the image download token of the job")
    if decode_image_token(key, credentials.credentials) != image_id:
        raise errors.Unauthorized(f"the download token is not for image {image_id}")
    image, path = image_service.image_file_for_agent(session, image_id, settings.state_dir)
    return ImageFile(path, media_type=OCTET_STREAM, headers={"X-Image-Sha256": image.sha256 or ""})


@router.get(
    "/{image_id}/file",
    response_class=FileResponse,
    **allow("image", "read", responses={200: {"content": {OCTET_STREAM: {}}}, 409: {"model": ErrorResponse}}),
)
def download_image_file(image_id: ImageId, session: SessionDep, caller: CurrentUser, settings: SettingsDep) -> FileResponse:
    """The bytes of an active image, streamed from disk; the ETag and ``X-Image-Sha256`` carry its SHA-256."""
    image, path = image_service.image_file(session, caller, image_id, settings.state_dir)
    return ImageFile(
        path,
        media_type=OCTET_STREAM,
        filename=f"{image.name}.{image.disk_format}",
        headers={"X-Image-Sha256": image.sha256 or "", "ETag": f'"{image.sha256}"'},
    )
