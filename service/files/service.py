"""Uploaded files: the bytes go to the files directory, a row records whose they are. Used by the OpenAI
drop-in, whose batches read their requests from an uploaded JSONL file."""

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
from service.models import ApiKey, File

PURPOSES = ("batch",)
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
    size = storage.save(settings, file_id, source)
    try:
        file = File(
            id=file_id,
            tenant_id=key.tenant_id,
            api_key_id=key.id,
            purpose=purpose,
            filename=(filename or "upload.jsonl")[:255],
            size=size,
            created_at=utcnow(),
        )
        repository.add(session, file)
    except BaseException:
        storage.remove(settings, file_id)
        raise
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
    path = storage.path_for(settings, file.id)
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        # The row exists but the directory lost the bytes (a different MMJOBS_FILES_DIR per API process?).
        raise APIError(500, "file_missing", f"the bytes of {file.id} are not in the files directory") from None
    with handle:
        yield handle
