"""Images of an organisation: what the API does with them, apart from HTTP.

Tenant-scoped through ``crud`` (another organisation's id is NotFound); who may do what is
api/policy.py's, decided before the service runs.

An image's bytes live in ``<state_dir>/images/<id>.<disk_format>``. An upload streams into
a temporary file beside it (same file system, so the final rename is atomic), hashing as
it goes; only a complete, checked, fsynced file is renamed into place, in the same
transaction that marks the row ``active``. Anything else removes the temporary file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

from sqlalchemy import CursorResult, RowMapping, func, select, update
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from cloudland.client import new_job_id
from cloudland.errors import Conflict, InvalidRequest, NotFound, PayloadTooLarge
from cloudland_api.models import IMAGE, Image, Instance, Job, JobState
from cloudland_api.schemas import ImageCreate, ImagePublic
from cloudland_api.services import crud
from cloudland_api.services.identity import Caller

log = logging.getLogger(__name__)

QCOW2_MAGIC = b"QFI\xfb"  # qcow2 header "magic" field (QEMU docs/interop/qcow2.txt)
# Bytes gathered before one write+hash in a worker thread: large enough that the thread
# hop is negligible, small enough that an upload holds at most this much in memory.
WRITE_BATCH = 1024 * 1024


def image_dir(state_dir: Path) -> Path:
    """The directory holding every organisation's image files."""
    return state_dir / "images"


def image_path(state_dir: Path, image: Image) -> Path:
    """Where ``image``'s bytes are (once it is active)."""
    return image_dir(state_dir) / f"{image.id}.{image.disk_format}"


ABANDONED_UPLOAD_S = 24 * 3600  # an upload's temporary file untouched this long lost its writer


def remove_abandoned_uploads(state_dir: Path, older_than_s: float = ABANDONED_UPLOAD_S) -> int:
    """Remove the temporary files of uploads whose API process died mid-stream (kill -9, power
    loss): ``images/.upload-*.part`` not written for ``older_than_s``. A live upload writes
    every WRITE_BATCH bytes, so it is never this old; another API process's is safe too.
    Returns how many were removed."""
    cutoff = time.time() - older_than_s
    removed = 0
    for part in image_dir(state_dir).glob(".upload-*.part"):
        with suppress(FileNotFoundError):  # finished or removed meanwhile
            if part.stat().st_mtime < cutoff:
                part.unlink()
                removed += 1
                log.warning("event=abandoned_upload_removed path=%s", part)
    return removed


def list_images(session: Session, caller: Caller, limit: int, after: str | None) -> tuple[list[RowMapping], str | None]:
    """One page of the caller's organisation's images by id, and the next page's cursor; the images
    as rows of ImagePublic's columns (crud "hot reads as rows")."""
    return crud.page_rows(session, Image, ImagePublic, caller, limit, after, "images", list, {})


def get_image(session: Session, caller: Caller, image_id: int) -> Image:
    """The caller's organisation's image ``image_id``, or NotFound."""
    return crud.get(session, Image, caller, image_id, "image")


def create_image(session: Session, caller: Caller, spec: ImageCreate) -> Image:
    """Create a ``queued`` image record (admin or member); its bytes follow by upload."""
    row = Image(**crud.owner(caller), status="queued", size_bytes=0, **spec.model_dump())
    image = crud.insert_named(session, row, "image")
    log.info("event=image_created org_id=%d image_id=%d user_id=%d", caller.org_id, image.id, caller.user_id)
    return image


def delete_image(session: Session, caller: Caller, image_id: int, state_dir: Path) -> Job | None:
    """Delete an image and its file (admin or member). When no other image has the same bytes,
    also a job that evicts the hypervisors' cached copies (api/jobs/image.py), committed with
    the delete and returned for the engine; else None."""
    image = get_image(session, caller, image_id)
    # Live instances boot from (and, on real hypervisors, have overlays on) this image.
    users = session.scalars(
        select(Instance.name).where(Instance.image_id == image_id, Instance.status != "deleted")
        .order_by(Instance.id).limit(4)
    ).all()
    if users:
        count = session.scalar(select(func.count()).select_from(Instance)
                               .where(Instance.image_id == image_id, Instance.status != "deleted"))
        shown = ", ".join(users[:3]) + (", ..." if count and count > 3 else "")
        raise Conflict(f"image {image_id} ({image.name}) is used by {count} instance(s) ({shown}); "
                       "delete them first")
    path = image_path(state_dir, image)
    evict = None
    # Caches are shared by every tenant and named by content: another image with the same
    # bytes (any organisation's) still needs the base.
    if image.sha256 is not None and session.scalar(
            select(Image.id).where(Image.sha256 == image.sha256, Image.disk_format == image.disk_format,
                                   Image.id != image_id).limit(1)) is None:
        # Committed with the delete: the hypervisors' copies go even if the API stops now.
        evict = Job(id=new_job_id(), **crud.owner(caller), user_id=caller.user_id, batch=new_job_id(),
                    kind="image", action="evict", subject_type=IMAGE, subject_id=image_id,
                    args={"sha256": image.sha256}, state=JobState.pending, attempts=0)
        session.add(evict)
    session.delete(image)
    session.commit()
    # After the commit: a failed commit must not lose the bytes of a row that still exists.
    # A concurrent upload cannot rename a file in afterwards; its UPDATE finds no row.
    path.unlink(missing_ok=True)
    log.info("event=image_deleted org_id=%d image_id=%d user_id=%d", caller.org_id, image_id, caller.user_id)
    return evict


def image_file(session: Session, caller: Caller, image_id: int, state_dir: Path) -> tuple[Image, Path]:
    """An active image and the path of its bytes; Conflict while it has none."""
    image = get_image(session, caller, image_id)
    if image.status != "active":
        raise Conflict(f"image {image_id} has no data yet; upload it with PUT /api/v1/images/{image_id}/file")
    path = image_path(state_dir, image)
    if not path.is_file():
        # The row says active but the directory lost the file: an operator must look.
        log.error("event=image_file_missing org_id=%d image_id=%d path=%s", caller.org_id, image_id, path)
        raise NotFound(f"image {image_id}'s file is missing from the image directory")
    return image, path


def image_for_agent(session: Session, image_id: int) -> Image:
    """An active image by id alone: for a hypervisor holding a download token for it."""
    image = session.get(Image, image_id)
    if image is None:
        raise NotFound(f"image {image_id} not found")
    if image.status != "active":
        raise Conflict(f"image {image_id} has no data yet")
    return image


def image_file_for_agent(session: Session, image_id: int, state_dir: Path) -> tuple[Image, Path]:
    """An active image and the path of its bytes, by id alone (see ``image_for_agent``)."""
    image = image_for_agent(session, image_id)
    path = image_path(state_dir, image)
    if not path.is_file():
        log.error("event=image_file_missing image_id=%d path=%s", image_id, path)
        raise NotFound(f"image {image_id}'s file is missing from the image directory")
    return image, path


def image_for_upload(session: Session, caller: Caller, image_id: int) -> Image:
    """The queued image an upload may fill: NotFound, then Conflict if active."""
    image = get_image(session, caller, image_id)
    if image.status == "saving":
        raise Conflict(f"image {image_id} is being captured from an instance; its bytes come from there")
    if image.status != "queued":
        raise Conflict(f"image {image_id} is already {image.status}; delete it and create a new one to replace it")
    return image


def image_for_capture(session: Session, image_id: int, replay: bool = False) -> Image:
    """The ``saving`` image a hypervisor's capture upload may fill, by id alone (the route checked
    the job's upload token for it); Conflict once it is anything else. ``replay``: an ``active``
    one too, which a replayed job may send the same bytes to again (``_activate`` compares)."""
    image = session.get(Image, image_id)
    if image is None:
        raise NotFound(f"image {image_id} not found (deleted while it was being captured?)")
    if image.status != "saving" and not (replay and image.status == "active"):
        raise Conflict(f"image {image_id} is {image.status}, not being captured")
    return image


def _upload_target(session: Session, caller: Caller | None, image_id: int) -> Image:
    image = image_for_upload(session, caller, image_id) if caller else image_for_capture(session, image_id, True)
    # End the read transaction before streaming: held open it would keep SQLite's write
    # lock (write sessions BEGIN IMMEDIATE) or an idle PostgreSQL transaction for as long
    # as the upload takes. Nothing was written; the row is re-checked when it is activated.
    session.commit()
    return image


def _ended_on_error(work: Any, session: Session, *args: Any) -> Any:
    """``work(session, *args)``, its transaction rolled back in this same call if it raises.

    The upload holds no write turn (deps.StreamingSessionDep), so no transaction of it may
    outlive the worker-thread call that began it: SQLite's write lock would stay held.
    """
    try:
        return work(session, *args)
    except BaseException:
        session.rollback()
        raise


@dataclass
class _Received:
    """A complete upload in its temporary file."""

    tmp: Path
    size: int
    sha256: str


async def upload_image(
    session: Session,
    caller: Caller | None,
    image_id: int,
    body: AsyncIterable[bytes],
    *,
    state_dir: Path,
    max_bytes: int,
    declared_size: int | None = None,
    expected_sha256: str | None = None,
) -> Image:
    """Stream ``body`` into image ``image_id``'s file and make the image ``active``.

    ``caller`` None: a hypervisor uploads a capture (the route checked its upload token); the
    image must be ``saving``, and the same bytes sent again (a replayed job) are success.

    Never holds more than ``WRITE_BATCH`` bytes in memory. Raises NotFound,
    Conflict (already active), PayloadTooLarge (over ``max_bytes``, checked against
    ``declared_size`` before reading), or InvalidRequest (empty, not qcow2, checksum
    mismatch); in every failure no file is left behind.
    """
    # Database work runs in worker threads: a locked SQLite file must not stall the loop.
    image = await run_in_threadpool(_ended_on_error, _upload_target, session, caller, image_id)
    if declared_size is not None and declared_size > max_bytes:
        raise PayloadTooLarge(f"image {image_id}: upload of {declared_size} bytes exceeds the limit of {max_bytes}")
    directory = image_dir(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    received = await _receive(image, body, directory, max_bytes)
    try:
        if expected_sha256 is not None and expected_sha256.lower() != received.sha256:
            raise InvalidRequest(
                f"image {image_id}: checksum mismatch: X-Image-Sha256 is {expected_sha256.lower()}, "
                f"the received bytes hash to {received.sha256}"
            )
        return await run_in_threadpool(_ended_on_error, _activate, session, caller, image, received, state_dir)
    finally:
        received.tmp.unlink(missing_ok=True)  # already renamed away on success


async def _receive(image: Image, body: AsyncIterable[bytes], directory: Path, max_bytes: int) -> _Received:
    """Write ``body`` to a new temporary file in ``directory``, hashing it; remove it on any failure."""
    fd, name = tempfile.mkstemp(dir=directory, prefix=f".upload-{image.id}-", suffix=".part")
    tmp = Path(name)
    hasher = hashlib.sha256()
    size = 0
    pending: list[bytes] = []
    pending_size = 0
    head_checked = False
    try:
        with os.fdopen(fd, "wb") as out:
            async for chunk in body:
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLarge(f"image {image.id}: upload exceeds the limit of {max_bytes} bytes")
                pending.append(chunk)
                pending_size += len(chunk)
                if not head_checked and size >= len(QCOW2_MAGIC):
                    # The head is still in ``pending`` (never written before WRITE_BATCH
                    # bytes): refuse a non-qcow2 body before storing any of it.
                    _check_magic(image, b"".join(pending)[: len(QCOW2_MAGIC)])
                    head_checked = True
                if pending_size >= WRITE_BATCH:
                    await run_in_threadpool(_write, out, hasher, pending)
                    pending, pending_size = [], 0
            if size == 0:
                raise InvalidRequest(f"image {image.id}: the upload body is empty; send the image bytes")
            if not head_checked:
                _check_magic(image, b"".join(pending))
            await run_in_threadpool(_write, out, hasher, pending)
            await run_in_threadpool(_sync, out)
    except BaseException:
        # Also on cancellation and client disconnects: no partial file may stay behind.
        tmp.unlink(missing_ok=True)
        raise
    return _Received(tmp, size, hasher.hexdigest())


def virtual_size_bytes(state_dir: Path, image: Image) -> int:
    """The size of the disk ``image`` (active) holds: a qcow2's from its header (big-endian
    uint64 at byte 24), a raw image's its length. Conflict when its file is missing."""
    path = image_path(state_dir, image)
    try:
        with path.open("rb") as file:
            head = file.read(32)
            size = path.stat().st_size
    except FileNotFoundError as exc:
        log.error("event=image_file_missing image_id=%d path=%s", image.id, path)
        raise Conflict(f"image {image.id} ({image.name}) has lost its file: upload it again") from exc
    if image.disk_format == "qcow2" and head.startswith(QCOW2_MAGIC) and len(head) >= 32:
        return int.from_bytes(head[24:32], "big")
    return size


def detect_format(head: bytes) -> str:
    """The disk format the first bytes of an image show: qcow2 by its magic, else raw."""
    return "qcow2" if head.startswith(QCOW2_MAGIC) else "raw"


def _check_magic(image: Image, head: bytes) -> None:
    """Refuse bytes of another format than the image declares, both ways (issue 16): a qcow2
    file stored as raw would boot its header as a disk."""
    detected = detect_format(head)
    if detected != image.disk_format:
        seen = "start" if detected == "qcow2" else f"do not start (got {head[:4]!r})"
        raise InvalidRequest(
            f"image {image.id} ({image.name}): disk_format is {image.disk_format} but the data is {detected} "
            f"(its bytes {seen} with the qcow2 magic); convert it or create the image with disk_format {detected}"
        )


def _write(out: BinaryIO, hasher: Any, chunks: list[bytes]) -> None:
    for chunk in chunks:
        hasher.update(chunk)
        out.write(chunk)


def _sync(out: BinaryIO) -> None:
    out.flush()
    os.fsync(out.fileno())


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk too.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _activate(session: Session, caller: Caller | None, image: Image, received: _Received, state_dir: Path) -> Image:
    """Mark the image active and rename its file into place, both or neither."""
    image_id = image.id  # a rollback expires ``image``; a deleted row could not reload it
    # Conditional UPDATE: of two uploads racing to the same image, only the first to
    # lock the row wins; the loser sees no queued (or saving) row and its file is discarded.
    scope = (Image.org_id == caller.org_id, Image.status == "queued") if caller else (Image.status == "saving",)
    result = cast(CursorResult[Any], session.execute(
        update(Image).where(Image.id == image_id, *scope)
        .values(status="active", size_bytes=received.size, sha256=received.sha256)
    ))
    if result.rowcount != 1:
        session.rollback()
        if caller is None:
            done = session.get(Image, image_id)
            if done is not None and done.status == "active" and done.sha256 == received.sha256:
                return done  # a replayed capture job sent the bytes that are already there
            image_for_capture(session, image_id)  # NotFound (deleted meanwhile) or Conflict
        else:
            image_for_upload(session, caller, image_id)  # NotFound (deleted meanwhile) or Conflict
        raise Conflict(f"image {image_id} changed during the upload; try again")
    final = image_path(state_dir, image)
    try:
        os.replace(received.tmp, final)
        _fsync_dir(final.parent)
        session.commit()
    except BaseException:
        session.rollback()
        final.unlink(missing_ok=True)
        raise
    session.refresh(image)
    log.info("event=image_uploaded org_id=%d image_id=%d size_bytes=%d sha256=%s by=%s", image.org_id, image.id,
             received.size, received.sha256, f"user:{caller.user_id}" if caller else "capture")
    return image
