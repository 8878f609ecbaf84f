"""`/v1/files`: images and videos for MiniMax-M3, uploaded once and referenced by jobs as `mmjobs_file://ID`."""

from __future__ import annotations

from functools import partial
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Query, Request

from service.api.deps import CurrentKey, SessionDep, SettingsDep
from service.api.errors import APIError
from service.files import service, storage, upload
from service.files.schemas import FileDeleted, MediaFile
from service.media.parts import MMJOBS_FILE
from service.models import File

router = APIRouter(prefix="/v1/files", tags=["files"])
_FORM = {
    "type": "object",
    "required": ["file", "purpose"],
    "properties": {
        "file": {"type": "string", "format": "binary"},
        "purpose": {"type": "string", "enum": list(service.MEDIA_PURPOSES)},
    },
}


def present(file: File) -> MediaFile:
    return MediaFile(
        id=file.id,
        purpose=file.purpose,
        filename=file.filename,
        bytes=file.size,
        sha256=file.sha256,
        media_type=file.media_type,
        created_at=file.created_at,
        reference=MMJOBS_FILE + file.id,
        minimax_file_id=file.minimax_file_id,
        minimax_uploaded_at=file.minimax_uploaded_at,
    )


@router.post(
    "",
    status_code=201,
    response_model=MediaFile,
    summary="Upload an image or a video (multipart: file, purpose)",
    description="`multipart/form-data` with `file` and `purpose` (`video_understanding` for a video: MP4, MOV, AVI, "
    "MKV; `image`: JPEG, PNG, GIF, WEBP), up to `MMJOBS_MAX_FILE_BYTES` (512 MB). Streamed to the file store as it "
    "arrives, with its SHA-256; the type is read from the content. Reference it in a job's image or video part as "
    "`mmjobs_file://ID` (the `reference` field): the worker uploads it to MiniMax's Files API once and sends "
    "`mm_file://...`.",
    responses={413: {"description": "Over the size limit"}, 415: {"description": "Not multipart/form-data"}},
    # The body is parsed as it streams (not by FastAPI), so its shape is declared here for the docs.
    openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": _FORM}}}},
)
async def upload_file(
    request: Request,
    session: SessionDep,
    key: CurrentKey,
    settings: SettingsDep,
    purpose: Annotated[str | None, Query(description="Instead of the form field.")] = None,
) -> MediaFile:
    if purpose is not None:
        service.check_media_purpose(purpose)  # refuse before the bytes are read
    store = storage.backend(settings)
    file_id = service.new_file_id()
    received = await upload.receive(
        request.stream(),
        request.headers.get("content-type", ""),
        store=store,
        file_id=file_id,
        max_bytes=settings.max_file_bytes,
    )
    assert received.writer is not None
    try:
        chosen = received.fields.get("purpose") or purpose
        if not chosen:
            raise APIError(422, "invalid_request", "purpose: required (video_understanding or image)", field="purpose")
        record = partial(
            service.record_media,
            session,
            key=key,
            settings=settings,
            file_id=file_id,
            written=received.writer,
            filename=received.filename,
            purpose=chosen,
        )
        file = await anyio.to_thread.run_sync(record)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(store.remove, file_id)
        raise
    return present(file)


@router.get("/{file_id}", response_model=MediaFile, summary="Get a file")
def get_file(file_id: str, session: SessionDep, key: CurrentKey) -> MediaFile:
    return present(service.get(session, key=key, file_id=file_id))


@router.delete("/{file_id}", response_model=FileDeleted, summary="Delete a file (jobs that still reference it fail)")
def delete_file(file_id: str, session: SessionDep, key: CurrentKey, settings: SettingsDep) -> FileDeleted:
    service.delete(session, key=key, settings=settings, file_id=file_id)
    return FileDeleted(id=file_id)
