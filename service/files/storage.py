"""File bytes on disk, one file per id in the files directory. Written to a `.part` name and renamed into place,
so a reader never sees half a file and a crash leaves only a `.part` to sweep."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import IO

from service.config import Settings

CHUNK = 1024 * 1024


def directory(settings: Settings) -> Path:
    return Path(settings.files_dir) if settings.files_dir else Path(settings.data_dir) / "files"


def path_for(settings: Settings, file_id: str) -> Path:
    # Ids are ours (`file-` + Crockford base32), never user input joined into a path unchecked.
    return directory(settings) / file_id


def save(settings: Settings, file_id: str, source: IO[bytes]) -> int:
    """Copy `source` to the file's place in chunks (constant memory) and return its size in bytes."""
    target = path_for(settings, file_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    try:
        with part.open("wb") as out:
            shutil.copyfileobj(source, out, CHUNK)
            size = out.tell()
            out.flush()
            os.fsync(out.fileno())
        os.replace(part, target)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return size


def remove(settings: Settings, file_id: str) -> None:
    path_for(settings, file_id).unlink(missing_ok=True)
