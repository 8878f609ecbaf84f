"""Document sources: a directory on the server, allowed by the operator (MMJOBS_SCHEDULE_SOURCE_DIRS), read anew
at every run. Each matching file becomes one request, through the same code as POST /v1/batches/documents.

Paths are resolved (symlinks followed) before they are checked, so neither the directory nor a file in it can
lead outside the allowed directories. Hidden files and files of a type we cannot read are left out.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence
from pathlib import Path
from typing import overload

from service.api.errors import APIError
from service.batches.documents import Upload
from service.batches.documents_router import MAX_FILES
from service.batches.extract import SUFFIXES, suffix_of
from service.config import Settings

FIELD = "template.documents"


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def allowed_root(directory: str, settings: Settings) -> Path:
    """The allowed directory that holds `directory`; 422 naming the field otherwise."""
    field = f"{FIELD}.directory"
    if not settings.schedule_source_dirs:
        raise APIError(
            422,
            "source_not_allowed",
            f"{field}: this server allows no document directories (the operator sets MMJOBS_SCHEDULE_SOURCE_DIRS)",
            field=field,
        )
    if not os.path.isabs(directory):
        raise APIError(422, "invalid_request", f"{field}: give an absolute path", field=field)
    real = Path(os.path.realpath(directory))
    for allowed in settings.schedule_source_dirs:
        root = Path(os.path.realpath(allowed))
        if _inside(real, root):
            if not real.is_dir():
                raise APIError(422, "source_unavailable", f"{field}: {directory} is not a directory", field=field)
            return root
    raise APIError(
        422,
        "source_not_allowed",
        f"{field}: {directory} is not inside a directory this server allows (MMJOBS_SCHEDULE_SOURCE_DIRS)",
        field=field,
    )


def check_pattern(pattern: str) -> None:
    if "/" in pattern or "\\" in pattern:
        field = f"{FIELD}.pattern"
        raise APIError(422, "invalid_request", f"{field}: a file name pattern, without directories", field=field)


def list_files(directory: str, pattern: str, settings: Settings) -> list[tuple[str, Path]]:
    """(name, resolved path) of each file to submit, sorted by name."""
    root = allowed_root(directory, settings)
    check_pattern(pattern)
    found: list[tuple[str, Path]] = []
    with os.scandir(os.path.realpath(directory)) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith(".") or not fnmatch.fnmatchcase(name, pattern) or suffix_of(name) not in SUFFIXES:
                continue
            real = Path(os.path.realpath(entry.path))
            if real.is_file() and _inside(real, root):
                found.append((name, real))
    if not found:
        raise APIError(
            422,
            "source_empty",
            f"{FIELD}: no readable file matches {pattern!r} in {directory} ({', '.join(SUFFIXES)})",
            field=FIELD,
        )
    if len(found) > MAX_FILES:
        raise APIError(422, "too_many_files", f"{FIELD}: {len(found):,} files; at most {MAX_FILES:,}", field=FIELD)
    return sorted(found)


class LazyUploads(Sequence[Upload]):
    """The files as uploads, each opened only when its turn comes (`document_requests` closes it once read)."""

    def __init__(self, files: list[tuple[str, Path]]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    @overload
    def __getitem__(self, index: int) -> Upload: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Upload]: ...
    def __getitem__(self, index: int | slice) -> Upload | Sequence[Upload]:
        if isinstance(index, slice):
            return LazyUploads(self.files[index])
        name, path = self.files[index]
        try:
            return Upload(filename=name, file=path.open("rb"))
        except OSError as exc:
            raise APIError(422, "source_unavailable", f"{FIELD}: {name} cannot be read ({exc})", field=FIELD) from None
