"""Uploaded files: the bytes go to the file store (`storage.py`), a row records whose they are and what they are.
Used by the OpenAI drop-in (batch input, JSONL) and by `POST /v1/files` (images and videos for MiniMax-M3, whose
type is sniffed from the content and must suit the purpose)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from sqlalchemy import event
from sqlalchemy.orm import Session

from service.api.errors import APIError
from service.config import Settings
from service.db import new_id, utcnow
from service.files import repository, storage
from service.limits import quotas
from service.media import formats
from service.models import ApiKey, File

PURPOSES = ("batch",)
# What a media file is for: a video for MiniMax's video understanding, or an image.
MEDIA_PURPOSES: dict[str, formats.Kind] = {"video_understanding": "video", "image": "image"}
ID_PREFIX = "file-"
_ID = re.compile(r"^file-[0-9a-z]{26}$")


def new_file_id() -> str:
    # OpenAI's shape (`file-...`) around our sortable id.
    return ID_PREFIX + new_id("file").removeprefix("file_")


def create(
    session: Session, *, key: ApiKey, settings: Settings, source: IO[bytes], filename: str, purpose: str
) -> File:
    """Store the upload and its row. If the row cannot be written the bytes are removed again; a failed commit
    after this returns leaves an orphan file that no row points at, harmless and never served."""
    if purpose not in PURPOSES:
        raise APIError(
            400, "invalid_request", f"purpose: {purpose!r} is not supported; use {', '.join(PURPOSES)}", field="purpose"
        )
    file_id = new_file_id()
    store = storage.backend(settings)
    written = storage.write_all(store, file_id, source)
    try:
        file = File(
            id=file_id,
            tenant_id=key.tenant_id,
            api_key_id=key.id,
            purpose=purpose,
            filename=(filename or "upload.jsonl")[:255],
            size=written.size,
            sha256=written.sha256,
            created_at=utcnow(),
        )
        repository.add(session, file)
        quotas.admit_file(session, key=key, settings=settings, size=written.size)  # issue 14
    except BaseException:
        store.remove(file_id)
        raise
    return file


def check_media_purpose(purpose: str) -> formats.Kind:
    if purpose not in MEDIA_PURPOSES:
        allowed = ", ".join(MEDIA_PURPOSES)
        raise APIError(422, "invalid_request", f"purpose: {purpose!r} is not supported; use {allowed}", field="purpose")
    return MEDIA_PURPOSES[purpose]


def media_format(head: bytes, purpose: str) -> formats.Format:
    """The format the content shows; a 422 naming `file` if it is not one MiniMax reads or does not suit the
    purpose."""
    kind = check_media_purpose(purpose)
    found = formats.sniff(head)
    if found is None:
        raise APIError(
            422,
            "invalid_request",
            f"file: the content is not a supported {kind} format ({formats.supported_names(kind)})",
            field="file",
        )
    if found.kind != kind:
        raise APIError(
            422,
            "invalid_request",
            f"file: the content is {found.name}, a {found.kind}, but purpose {purpose!r} needs a {kind}",
            field="file",
        )
    return found


def record_media(
    session: Session,
    *,
    key: ApiKey,
    settings: Settings,
    file_id: str,
    written: storage.Writer,
    filename: str,
    purpose: str,
) -> File:
    """The row of a media file whose bytes the store already holds (committed by the upload)."""
    found = media_format(written.head, purpose)
    file = File(
        id=file_id,
        tenant_id=key.tenant_id,
        api_key_id=key.id,
        purpose=purpose,
        filename=(filename or "upload")[:255],
        size=written.size,
        sha256=written.sha256,
        media_type=found.media_type,
        created_at=utcnow(),
    )
    repository.add(session, file)
    quotas.admit_file(session, key=key, settings=settings, size=written.size)  # issue 14; the caller removes the bytes
    return file


def get(session: Session, *, key: ApiKey, file_id: str) -> File:
    file = repository.get(session, tenant_id=key.tenant_id, file_id=file_id) if _ID.match(file_id) else None
    if file is None:
        raise APIError(404, "not_found", f"No such File object: {file_id}", field="file_id")
    return file


def delete(session: Session, *, key: ApiKey, settings: Settings, file_id: str) -> None:
    file = get(session, key=key, file_id=file_id)
    repository.remove(session, file_id=file.id)
    # The bytes go once the row is gone for good; a rollback keeps both.
    event.listen(session, "after_commit", lambda _session: storage.remove(settings, file.id), once=True)


@contextmanager
def open_bytes(settings: Settings, file: File) -> Iterator[IO[bytes]]:
    try:
        handle = storage.backend(settings).open(file.id)
    except storage.StoredFileMissing as exc:
        # The row exists but the store lost the bytes (a different MMJOBS_FILES_DIR per process?).
        raise APIError(500, "file_missing", str(exc)) from None
    with handle:
        yield handle
