"""What every file store backend shares: the Writer and Storage interface, the missing-bytes error and the
running digest (size, SHA-256, first bytes). storage.py (the directory backend and the choice of backend) and s3.py
both build on it."""

from __future__ import annotations

import hashlib
from typing import IO, Protocol

CHUNK = 1024 * 1024
HEAD_BYTES = 64


class StoredFileMissing(Exception):
    """The row exists but the store has no bytes under its id."""


class Writer(Protocol):
    size: int
    head: bytes

    def write(self, chunk: bytes) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...

    @property
    def sha256(self) -> str: ...


class Storage(Protocol):
    def writer(self, file_id: str) -> Writer: ...

    def open(self, file_id: str) -> IO[bytes]:
        """A binary stream of the file (close it when done); raises StoredFileMissing."""
        ...

    def remove(self, file_id: str) -> None: ...


class Digest:
    """What every writer keeps while bytes pass: size, SHA-256 and the first HEAD_BYTES bytes."""

    def __init__(self) -> None:
        self.size = 0
        self.head = b""
        self._hash = hashlib.sha256()

    def update(self, chunk: bytes) -> None:
        if len(self.head) < HEAD_BYTES:
            self.head += chunk[: HEAD_BYTES - len(self.head)]
        self.size += len(chunk)
        self._hash.update(chunk)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()
