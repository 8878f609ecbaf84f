"""The file store: where uploaded bytes live, one object per file id.

Two backends behind one small interface. `dir` (the default) keeps one file per id in the files directory; every
API and worker process must see the same directory (one host, or a shared volume). `s3` keeps one object per id
in an S3-compatible bucket (AWS S3, MinIO, Ceph, R2...), for deployments spread over several hosts
(`MMJOBS_STORAGE=s3`, `MMJOBS_S3_BUCKET`, `MMJOBS_S3_ENDPOINT_URL`, `MMJOBS_S3_REGION`, `MMJOBS_S3_ACCESS_KEY_ID`,
`MMJOBS_S3_SECRET_ACCESS_KEY`, `MMJOBS_S3_PREFIX`).

Writers take the bytes in chunks and make them visible only on `commit` (a `.part` file renamed into place; an
S3 multipart upload completed), so a reader never sees half a file and an aborted upload leaves nothing behind.
A writer also computes the SHA-256 and keeps the first bytes, for the checksum and the type sniffed from content.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from service.config import Settings

# The interface and what every backend shares live in service/files/backend.py (the S3 backend imports them from
# there, so this module importing the S3 backend makes no circle); named here too for the callers.
from service.files.backend import CHUNK, HEAD_BYTES, Digest, Storage, StoredFileMissing, Writer

__all__ = ["CHUNK", "HEAD_BYTES", "Digest", "DirStorage", "Storage", "StoredFileMissing", "Writer"]


class DirWriter(Digest):
    def __init__(self, target: Path) -> None:
        super().__init__()
        target.parent.mkdir(parents=True, exist_ok=True)
        self._target = target
        self._part = target.with_name(target.name + ".part")
        self._out: IO[bytes] | None = self._part.open("wb")

    def write(self, chunk: bytes) -> None:
        assert self._out is not None, "write after commit or abort"
        self.update(chunk)
        self._out.write(chunk)

    def commit(self) -> None:
        assert self._out is not None, "commit after commit or abort"
        out, self._out = self._out, None
        with out:
            out.flush()
            os.fsync(out.fileno())
        os.replace(self._part, self._target)

    def abort(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None
        self._part.unlink(missing_ok=True)


class DirStorage:
    """One file per id in a directory shared by every API and worker process."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, file_id: str) -> Path:
        # Ids are ours (`file-` + Crockford base32), never user input joined into a path unchecked.
        return self.root / file_id

    def writer(self, file_id: str) -> DirWriter:
        return DirWriter(self.path_for(file_id))

    def open(self, file_id: str) -> IO[bytes]:
        try:
            return self.path_for(file_id).open("rb")
        except FileNotFoundError:
            raise StoredFileMissing(f"the bytes of {file_id} are not in the files directory {self.root}") from None

    def remove(self, file_id: str) -> None:
        self.path_for(file_id).unlink(missing_ok=True)


def directory(settings: Settings) -> Path:
    return Path(settings.files_dir) if settings.files_dir else Path(settings.data_dir) / "files"


def backend(settings: Settings) -> Storage:
    """The store the settings choose (`MMJOBS_STORAGE`)."""
    if settings.storage == "s3":
        from service.files.s3 import S3Storage

        return S3Storage.from_settings(settings)
    return DirStorage(directory(settings))


def write_all(store: Storage, file_id: str, source: IO[bytes]) -> Writer:
    """Copy `source` into the store in chunks (constant memory); returns the committed writer (size, sha256)."""
    writer = store.writer(file_id)
    try:
        while chunk := source.read(CHUNK):
            writer.write(chunk)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return writer


@contextmanager
def opened(store: Storage, file_id: str) -> Iterator[IO[bytes]]:
    handle = store.open(file_id)
    try:
        yield handle
    finally:
        handle.close()


# --- the directory layout the OpenAI drop-in serves files from (FileResponse needs a path) ---------------------


def path_for(settings: Settings, file_id: str) -> Path:
    return DirStorage(directory(settings)).path_for(file_id)


def save(settings: Settings, file_id: str, source: IO[bytes]) -> int:
    """Copy `source` to the file's place in the configured store and return its size in bytes."""
    return write_all(backend(settings), file_id, source).size


def remove(settings: Settings, file_id: str) -> None:
    backend(settings).remove(file_id)
