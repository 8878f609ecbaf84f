"""Before a call: turn the request's `mmjobs_file://ID` references into what MiniMax reads.

A video goes to MiniMax's Files API (`POST {base}/v1/files/upload`, purpose `video_understanding`) once; its
MiniMax id is kept on the file row and reused while younger than `MMJOBS_MINIMAX_FILE_REUSE_SECONDS` (MiniMax
keeps files 7 days), and the part is sent as `mm_file://ID`. Uploads of one file never run twice at once: a
conditional UPDATE hands one worker a hold on the file (until a time that grows with its size); the others wait
for its id, or take over once the hold ran out (the uploader died). An image is sent inline as base64 (at most
10 MB), since MiniMax documents its Files API for video. The bytes stream from the file store to MiniMax in
chunks; nothing holds a whole file in memory.

Failures are `UpstreamError`s, so the attempt records them like any call: a missing file or one of another
tenant is permanent (`file_not_found`), a failed upload is classified as MiniMax answered it.
"""

from __future__ import annotations

import base64
import logging
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from datetime import timedelta
from typing import Any

import httpx

from service.db import transaction, utcnow
from service.files import repository, storage
from service.jobs.transitions import Claim
from service.media import formats
from service.media.parts import MM_FILE, MMJOBS_FILE
from service.models import File
from workers import stopping
from workers.providers.base import Classification, UpstreamError
from workers.providers.errors import transport_error
from workers.providers.transport import checked_json, endpoint
from workers.runtime import Runtime, Upstream

log = logging.getLogger(__name__)

UPLOAD_PATH = "/v1/files/upload"
UPLOAD_PURPOSE = "video_understanding"
CHUNK = 1024 * 1024
# An upload holds its file this long plus a second per 2 MB; others wait for it, polling.
HOLD_BASE_SECONDS = 60.0
HOLD_BYTES_PER_SECOND = 2 * 1024 * 1024
POLL_SECONDS = 0.5
_KINDS = {"image": "image", "video": "video", "image_url": "image", "video_url": "video"}


def permanent(error_type: str, message: str) -> UpstreamError:
    return UpstreamError(classification=Classification.PERMANENT, error_type=error_type, message=message)


def prepare(claim: Claim, rt: Runtime, upstream: Upstream) -> Claim:
    """The claim with its `mmjobs_file://` parts resolved (unchanged, and nothing copied, when it has none); videos
    go to `upstream`, the account that will take the call."""
    resolved: dict[str, dict[str, Any]] = {}

    def resolve(part: Mapping[str, Any]) -> Mapping[str, Any]:
        key = "source" if claim.format == "anthropic" else str(part.get("type"))
        holder = part.get(key)
        url = holder.get("url") if isinstance(holder, Mapping) else None
        if not isinstance(holder, Mapping) or not isinstance(url, str) or not url.startswith(MMJOBS_FILE):
            return part
        file_id = url[len(MMJOBS_FILE) :]
        kind = _KINDS[str(part.get("type"))]
        if file_id not in resolved:
            resolved[file_id] = _resolve(file_id, kind, claim, rt, upstream)
        options = {k: v for k, v in holder.items() if k in ("detail", "fps", "max_long_side_pixel")}
        return {**part, key: _holder(claim.format, resolved[file_id], options)}

    params = _rewrite(claim.params, resolve)
    return claim if params is claim.params else replace(claim, params=params)


def _holder(fmt: str, target: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """The part's new source (Anthropic) or image_url / video_url object (OpenAI), its options kept."""
    if "mm_file" in target:
        url = MM_FILE + target["mm_file"]
        return {"type": "url", "url": url, **options} if fmt == "anthropic" else {"url": url, **options}
    if fmt == "anthropic":
        return {"type": "base64", "media_type": target["media_type"], "data": target["data"], **options}
    return {"url": f"data:{target['media_type']};base64,{target['data']}", **options}


def _rewrite(params: dict[str, Any], fn: Callable[[Mapping[str, Any]], Mapping[str, Any]]) -> dict[str, Any]:
    """`params` with `fn` applied to every media part; containers are copied only along a changed path."""
    messages = params.get("messages")
    if not isinstance(messages, list):
        return params
    new = _rewrite_list(messages, lambda m: _with_content(m, fn) if isinstance(m, Mapping) else m)
    return params if new is messages else {**params, "messages": new}


def _with_content(message: Mapping[str, Any], fn: Callable[[Mapping[str, Any]], Mapping[str, Any]]) -> Any:
    content = message.get("content")
    if not isinstance(content, list):
        return message
    new = _rewrite_list(content, lambda part: _part(part, fn))
    return message if new is content else {**message, "content": new}


def _part(part: Any, fn: Callable[[Mapping[str, Any]], Mapping[str, Any]]) -> Any:
    if not isinstance(part, Mapping):
        return part
    if part.get("type") in _KINDS:
        return fn(part)
    if part.get("type") == "tool_result":
        return _with_content(part, fn)
    return part


def _rewrite_list(items: list[Any], fn: Callable[[Any], Any]) -> list[Any]:
    out: list[Any] | None = None
    for index, item in enumerate(items):
        new = fn(item)
        if new is not item:
            if out is None:
                out = list(items)
            out[index] = new
    return items if out is None else out


def _resolve(file_id: str, kind: str, claim: Claim, rt: Runtime, upstream: Upstream) -> dict[str, Any]:
    with transaction(rt.session_factory) as session:
        file = repository.get(session, tenant_id=claim.tenant_id, file_id=file_id)
    if file is None:
        raise permanent("file_not_found", f"{MMJOBS_FILE}{file_id}: no such file (deleted, or never uploaded)")
    media = next((f for f in formats.FORMATS if f.media_type == file.media_type), None)
    if media is None or media.kind != kind:
        what = f"a {media.kind}" if media is not None else f"not an image or video (purpose {file.purpose})"
        raise permanent("invalid_file", f"{MMJOBS_FILE}{file_id} is {what}, used in a {kind} part")
    store = storage.backend(rt.settings)
    if kind == "image":
        if file.size > formats.IMAGE_MAX_BYTES:
            raise permanent("invalid_file", f"{MMJOBS_FILE}{file_id}: images go inline, at most 10 MB")
        with _opened(store, file) as handle:
            data = base64.b64encode(handle.read()).decode("ascii")
        return {"media_type": media.media_type, "data": data}
    return {"mm_file": ensure_uploaded(file, store, rt, upstream)}


def ensure_uploaded(file: File, store: storage.Storage, rt: Runtime, upstream: Upstream) -> str:
    """The file's MiniMax id in `upstream`'s account: the kept one while young enough and of that account, else a
    new upload (one process at a time)."""
    hold = timedelta(seconds=HOLD_BASE_SECONDS + file.size / HOLD_BYTES_PER_SECOND)
    while True:
        now = utcnow()
        young = now - timedelta(seconds=rt.settings.minimax_file_reuse_seconds)
        with transaction(rt.session_factory) as session:
            kept = repository.fresh_minimax_id(
                session, file_id=file.id, uploaded_after=young, account=upstream.account
            )
            won = kept is None and repository.take_upload(
                session, file_id=file.id, uploaded_after=young, now=now, until=now + hold, account=upstream.account
            )
            held_until = None if kept or won else repository.upload_held_until(session, file_id=file.id)
        if kept is not None:
            return kept
        if won:
            break
        wait = (held_until - now).total_seconds() if held_until is not None else POLL_SECONDS
        with stopping.outside_the_gate():  # asleep: another call may run meanwhile (workers/stopping.py Gate)
            time.sleep(min(max(wait, 0.05), POLL_SECONDS))
    try:
        minimax_id = upload(file, store, rt, upstream)
    except BaseException:
        with transaction(rt.session_factory) as session:
            repository.release_upload(session, file_id=file.id)
        raise
    with transaction(rt.session_factory) as session:
        repository.record_upload(
            session, file_id=file.id, minimax_file_id=minimax_id, uploaded_at=utcnow(), account=upstream.account
        )
    log.info("file %s uploaded to MiniMax as %s (%s bytes)", file.id, minimax_id, file.size)
    return minimax_id


class _opened:
    """The file's bytes from the store; a store without them is a permanent failure of this job."""

    def __init__(self, store: storage.Storage, file: File) -> None:
        self._store, self._file = store, file

    def __enter__(self) -> Any:
        try:
            self._handle = self._store.open(self._file.id)
        except storage.StoredFileMissing as exc:
            raise permanent("file_missing", str(exc)) from None
        return self._handle

    def __exit__(self, *exc: object) -> None:
        self._handle.close()


def upload(file: File, store: storage.Storage, rt: Runtime, upstream: Upstream) -> str:
    """POST the file to MiniMax's Files API as a multipart body streamed from the store; its id as a string."""
    boundary = secrets.token_hex(16)
    name = file.id + {"video/quicktime": ".mov", "video/x-msvideo": ".avi", "video/x-matroska": ".mkv"}.get(
        file.media_type or "", ".mp4"
    )
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n{UPLOAD_PURPOSE}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        f"Content-Type: {file.media_type or 'application/octet-stream'}\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def body() -> Iterator[bytes]:
        yield head
        with _opened(store, file) as handle:
            while chunk := handle.read(CHUNK):
                yield chunk
        yield tail

    headers = {
        "Authorization": f"Bearer {upstream.api_key}",
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        "Content-Length": str(len(head) + file.size + len(tail)),
    }
    try:
        response = rt.http.post(endpoint(upstream.base_url, UPLOAD_PATH), content=body(), headers=headers)
    except httpx.RequestError as exc:
        raise transport_error(exc, in_body=False) from exc
    payload = checked_json(response)
    uploaded = payload.get("file")
    file_id = uploaded.get("file_id") if isinstance(uploaded, Mapping) else None
    if isinstance(file_id, bool) or not isinstance(file_id, int | str) or not str(file_id).isdigit():
        raise UpstreamError(
            classification=Classification.RETRYABLE,
            error_type="invalid_response",
            message=f"Files API answer without file.file_id: {payload!r:.200}",
            http_status=response.status_code,
        )
    return str(file_id)
