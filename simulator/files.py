"""MiniMax's Files API: ``POST /v1/files/upload`` (multipart ``purpose``, ``file``), ``GET /v1/files/retrieve
?file_id=``, ``GET /v1/files/list?purpose=``, ``POST /v1/files/delete`` ``{file_id, purpose}``.

Answers have the real shape, ``{"file": {"file_id": <int64>, "bytes", "created_at", "filename", "purpose"},
"base_resp": {...}}``. The simulator keeps each file's metadata in memory, not its bytes: the size is all the
token counting needs (a video's length is derived from it, see ``simulator.tokens``). A video upload must look
like MP4/MOV, AVI or MKV by its first bytes. A message that references an ``mm_file://ID`` the store does not
have (never uploaded, or deleted) is a 400 (2013), as the real API refuses it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request
from starlette.datastructures import UploadFile

from simulator.calls import bearer_key, check_key, read_json
from simulator.errors import SimError
from simulator.filestore import StoredFile
from simulator.state import SimState, StateDep

router = APIRouter(prefix="/v1/files")

MAX_FILE_BYTES = 512 * 1024 * 1024
PURPOSES = ("video_understanding", "retrieval", "fine-tune", "voice_clone", "prompt_audio", "t2a_async_input")
SUCCESS = {"status_code": 0, "status_msg": "success"}
_MM_FILE = re.compile(r"^mm_file://([0-9]+)$")
_CHUNK = 1024 * 1024


def check_references(state: SimState, messages: Iterable[Mapping[str, Any]]) -> None:
    """400 (2013) for the first ``mm_file://ID`` the store does not have."""
    for message in messages:
        for part in _parts(message.get("content")):
            for holder in (part.get("source"), part.get("image_url"), part.get("video_url")):
                url = holder.get("url") if isinstance(holder, Mapping) else None
                found = _MM_FILE.match(url) if isinstance(url, str) else None
                if found is not None and state.files.get(found.group(1)) is None:
                    raise SimError.invalid(f"file {found.group(1)} not found (expired or deleted)")


def _parts(content: object) -> Iterable[Mapping[str, Any]]:
    for part in content if isinstance(content, list) else ():
        if isinstance(part, Mapping):
            yield part
            if part.get("type") == "tool_result":
                yield from _parts(part.get("content"))


def _looks_like_video(head: bytes) -> bool:
    return head[4:8] == b"ftyp" or (head[:4] == b"RIFF" and head[8:12] == b"AVI ") or head[:4] == b"\x1a\x45\xdf\xa3"


def _answer(stored: StoredFile) -> dict[str, Any]:
    return {"file": asdict(stored), "base_resp": SUCCESS}


def _key(state: SimState, request: Request) -> None:
    check_key(state, bearer_key(request))


@router.post("/upload")
async def upload(request: Request, state: StateDep) -> dict[str, Any]:
    _key(state, request)
    form = await request.form(max_files=1, max_fields=4)
    try:
        purpose, file = form.get("purpose"), form.get("file")
        if not isinstance(purpose, str) or purpose not in PURPOSES:
            raise SimError.invalid(f"purpose must be one of {', '.join(PURPOSES)}")
        if not isinstance(file, UploadFile):
            raise SimError.invalid("file is required")
        size, head = 0, b""
        while chunk := await file.read(_CHUNK):
            head = head or chunk[:16]
            size += len(chunk)
            if size > MAX_FILE_BYTES:
                raise SimError(413, "file too large, at most 512 MB", 2013)
        if size == 0:
            raise SimError.invalid("file is empty")
        if purpose == "video_understanding" and not _looks_like_video(head):
            raise SimError.invalid("unsupported video format (MP4, MOV, AVI, MKV)")
        stored = state.files.add(size=size, filename=file.filename or "upload", purpose=purpose)
    finally:
        await form.close()
    state.stats.outcome("file_upload")
    return _answer(stored)


@router.get("/retrieve")
async def retrieve(request: Request, state: StateDep, file_id: str = "") -> dict[str, Any]:
    _key(state, request)
    stored = state.files.get(file_id)
    if stored is None:
        raise SimError(404, f"file {file_id} not found", 2013)
    return _answer(stored)


@router.get("/list")
async def list_files(request: Request, state: StateDep, purpose: str | None = None) -> dict[str, Any]:
    _key(state, request)
    return {"files": [asdict(f) for f in state.files.listed(purpose)], "base_resp": SUCCESS}


@router.post("/delete")
async def delete(request: Request, state: StateDep) -> dict[str, Any]:
    _key(state, request)
    body = await read_json(request)
    file_id = str(body.get("file_id", ""))
    if state.files.delete(file_id) is None:
        raise SimError(404, f"file {file_id} not found", 2013)
    return {"file_id": int(file_id), "base_resp": SUCCESS}
