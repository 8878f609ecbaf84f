"""The simulator's store of uploaded files' metadata (the Files API in files.py serves it; state.py holds one)."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class StoredFile:
    file_id: int
    bytes: int
    created_at: int
    filename: str
    purpose: str


class FileStore:
    """Uploaded files' metadata, by id. Ids are int64-sized and never reused."""

    def __init__(self) -> None:
        self._files: dict[str, StoredFile] = {}
        self._ids = itertools.count(300_000_000_000_001)
        self._lock = threading.Lock()
        # Files uploaded so far (deleted ones included): tests read it to see that an upload happened once.
        self.uploads = 0

    def add(self, *, size: int, filename: str, purpose: str) -> StoredFile:
        with self._lock:
            stored = StoredFile(
                file_id=next(self._ids), bytes=size, created_at=int(time.time()), filename=filename, purpose=purpose
            )
            self._files[str(stored.file_id)] = stored
            self.uploads += 1
        return stored

    def get(self, file_id: str) -> StoredFile | None:
        return self._files.get(file_id)

    def size_of(self, file_id: str) -> int | None:
        stored = self._files.get(file_id)
        return stored.bytes if stored is not None else None

    def listed(self, purpose: str | None) -> list[StoredFile]:
        return [f for f in self._files.values() if purpose is None or f.purpose == purpose]

    def delete(self, file_id: str) -> StoredFile | None:
        with self._lock:
            return self._files.pop(file_id, None)
