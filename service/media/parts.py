"""Finding the image and video parts of a request, in either wire format, and reading where each one's bytes are.

Anthropic blocks: `{"type": "image"|"video", "source": {"type": "url", "url": ...} | {"type": "base64",
"media_type": ..., "data": ...}}`, options (`detail`, `fps`, `max_long_side_pixel`) on the source. OpenAI parts:
`{"type": "image_url"|"video_url", "image_url"|"video_url": {"url": ..., "detail", "fps", "max_long_side_pixel"}}`,
the url possibly a `data:MEDIA_TYPE;base64,...` URL.

A URL is one of: `http(s)://...` (MiniMax fetches it), `mm_file://ID` (a file already in MiniMax's Files API),
`mmjobs_file://FILE_ID` (a file uploaded to our `POST /v1/files`: the worker puts it in MiniMax's Files API and
sends `mm_file://ID`). Nothing here copies a payload: an inline payload is read through its offsets.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from service.media.formats import Kind

MMJOBS_FILE = "mmjobs_file://"
MM_FILE = "mm_file://"
FILE_ID = re.compile(r"^file-[0-9a-z]{26}$")
MM_FILE_ID = re.compile(r"^[0-9]{1,20}$")
_ANTHROPIC_KINDS: dict[str, Kind] = {"image": "image", "video": "video"}
_OPENAI_KINDS: dict[str, Kind] = {"image_url": "image", "video_url": "video"}


@dataclass(frozen=True, kw_only=True, slots=True)
class MediaPart:
    """One image or video part. `holder` is the dict with the url or data and the options (Anthropic's `source`,
    OpenAI's `image_url` / `video_url`), `holder_path` its field name as the user wrote it."""

    path: str
    kind: Kind
    fmt: str
    part: Mapping[str, Any]
    holder: Any
    holder_path: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Inline:
    """A base64 payload: `text[start:]` (a data URL keeps its prefix; slicing it off would copy megabytes)."""

    text: str
    start: int
    media_type: str | None
    field: str

    @property
    def length(self) -> int:
        return len(self.text) - self.start


@dataclass(frozen=True, kw_only=True, slots=True)
class Remote:
    url: str
    field: str


@dataclass(frozen=True, kw_only=True, slots=True)
class MiniMaxFile:
    file_id: str
    field: str


@dataclass(frozen=True, kw_only=True, slots=True)
class OurFile:
    file_id: str
    field: str


Location = Inline | Remote | MiniMaxFile | OurFile


class BadPart(ValueError):
    """A part whose shape is wrong; `field` is where."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def iter_parts(params: Mapping[str, Any], fmt: str) -> Iterator[MediaPart]:
    """Every image and video part of the messages, tool results' content included, in order."""
    kinds = _ANTHROPIC_KINDS if fmt == "anthropic" else _OPENAI_KINDS
    messages = params.get("messages")
    for i, message in enumerate(messages if isinstance(messages, list) else ()):
        content = message.get("content") if isinstance(message, Mapping) else None
        yield from _walk(content, f"params.messages[{i}].content", kinds, fmt)


def _walk(content: Any, path: str, kinds: Mapping[str, Kind], fmt: str) -> Iterator[MediaPart]:
    if not isinstance(content, list):
        return
    for j, part in enumerate(content):
        if not isinstance(part, Mapping):
            continue
        here = f"{path}[{j}]"
        kind = kinds.get(str(part.get("type")))
        if kind is not None:
            key = "source" if fmt == "anthropic" else str(part.get("type"))
            yield MediaPart(path=here, kind=kind, fmt=fmt, part=part, holder=part.get(key), holder_path=f"{here}.{key}")
        elif part.get("type") == "tool_result":
            yield from _walk(part.get("content"), f"{here}.content", kinds, fmt)


def locate(media: MediaPart) -> Location:
    """Where the part's bytes are; raises BadPart naming the field when the part does not say it properly."""
    holder, at = media.holder, media.holder_path
    if not isinstance(holder, Mapping):
        raise BadPart(at, "must be an object" + (" with type and url or data" if media.fmt == "anthropic" else ""))
    if media.fmt == "anthropic":
        source_type = holder.get("type")
        if source_type == "base64":
            data, media_type = holder.get("data"), holder.get("media_type")
            if not isinstance(data, str):
                raise BadPart(f"{at}.data", "base64 data (a string) is required")
            if not isinstance(media_type, str) or not media_type:
                raise BadPart(f"{at}.media_type", "required with base64 data, e.g. image/png or video/mp4")
            return Inline(text=data, start=0, media_type=media_type, field=f"{at}.data")
        if source_type != "url":
            raise BadPart(f"{at}.type", "must be url or base64")
    url = holder.get("url")
    if not isinstance(url, str) or not url:
        raise BadPart(f"{at}.url", "a URL (a string) is required")
    return _url_location(url, f"{at}.url", allow_data=media.fmt == "openai")


def _url_location(url: str, field: str, *, allow_data: bool) -> Location:
    head = url[:16].lower()
    if head.startswith(MMJOBS_FILE):
        file_id = url[len(MMJOBS_FILE) :]
        if not FILE_ID.match(file_id):
            raise BadPart(
                field, f"{url[:80]!r} is not a file of ours: write mmjobs_file://file-... as POST /v1/files gave it"
            )
        return OurFile(file_id=file_id, field=field)
    if head.startswith(MM_FILE):
        file_id = url[len(MM_FILE) :]
        if not MM_FILE_ID.match(file_id):
            raise BadPart(field, f"{url[:80]!r}: a MiniMax file id is a number, mm_file://123456")
        return MiniMaxFile(file_id=file_id, field=field)
    if head.startswith("data:") and allow_data:
        comma = url.find(",", 0, 256)
        meta = url[5:comma] if comma > 0 else ""
        if comma < 0 or not meta.endswith(";base64"):
            raise BadPart(field, "a data URL must read data:MEDIA_TYPE;base64,DATA")
        return Inline(text=url, start=comma + 1, media_type=meta.removesuffix(";base64") or None, field=field)
    if head.startswith(("http://", "https://")):
        return Remote(url=url, field=field)
    accepted = "an http(s) URL, mm_file://ID, mmjobs_file://FILE_ID" + (" or a data: URL" if allow_data else "")
    raise BadPart(field, f"must be {accepted}, not {url[:40]!r}")
