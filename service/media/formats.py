"""Image and video formats told by their content (magic bytes), never by a name or a declared type alone.

MiniMax-M3 reads images as JPEG, PNG, GIF or WEBP and videos as MP4, MOV, AVI or MKV. The first bytes settle
which: JPEG `FF D8 FF`, PNG `89 'PNG' 0D 0A 1A 0A`, GIF `GIF87a`/`GIF89a`, WEBP `RIFF....WEBP`, MP4 and MOV an
ISO base media `ftyp` box at offset 4 (brand `qt  ` for QuickTime), AVI `RIFF....AVI `, MKV the EBML header
`1A 45 DF A3` (a WebM DocType is refused: not a format MiniMax lists).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Literal

Kind = Literal["image", "video"]
# Enough of a file to recognize every format above (the EBML DocType sits within the first few dozen bytes).
HEAD_BYTES = 64
MB = 1024 * 1024
IMAGE_MAX_BYTES = 10 * MB
INLINE_VIDEO_MAX_BYTES = 50 * MB


@dataclass(frozen=True, kw_only=True, slots=True)
class Format:
    kind: Kind
    media_type: str
    name: str


JPEG = Format(kind="image", media_type="image/jpeg", name="JPEG")
PNG = Format(kind="image", media_type="image/png", name="PNG")
GIF = Format(kind="image", media_type="image/gif", name="GIF")
WEBP = Format(kind="image", media_type="image/webp", name="WEBP")
MP4 = Format(kind="video", media_type="video/mp4", name="MP4")
MOV = Format(kind="video", media_type="video/quicktime", name="MOV")
AVI = Format(kind="video", media_type="video/x-msvideo", name="AVI")
MKV = Format(kind="video", media_type="video/x-matroska", name="MKV")
FORMATS = (JPEG, PNG, GIF, WEBP, MP4, MOV, AVI, MKV)

# Declared media types each format answers to. MP4 and MOV share one container (ISO base media), and files
# are routinely labelled with either type, so each accepts the other.
_ALIASES: dict[str, tuple[Format, ...]] = {
    "image/jpeg": (JPEG,),
    "image/jpg": (JPEG,),
    "image/pjpeg": (JPEG,),
    "image/png": (PNG,),
    "image/gif": (GIF,),
    "image/webp": (WEBP,),
    "video/mp4": (MP4, MOV),
    "video/quicktime": (MOV, MP4),
    "video/mov": (MOV, MP4),  # MiniMax's own label for base64 MOV (its API spec, both endpoints)
    "video/x-msvideo": (AVI,),
    "video/avi": (AVI,),
    "video/msvideo": (AVI,),
    "video/x-matroska": (MKV,),
    "video/matroska": (MKV,),
    "video/mkv": (MKV,),
}


def supported_names(kind: Kind | None = None) -> str:
    return ", ".join(f.name for f in FORMATS if kind is None or f.kind == kind)


def sniff(head: bytes) -> Format | None:
    """The format the first bytes of a file show, or None when it is none MiniMax reads."""
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if head.startswith((b"GIF87a", b"GIF89a")):
        return GIF
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return WEBP
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return AVI
    if head[4:8] == b"ftyp":
        return MOV if head[8:12] == b"qt  " else MP4
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return None if b"webm" in head else MKV
    return None


def matches(declared: str, found: Format) -> bool:
    """Whether a declared media type (`video/mp4; codecs=...` allowed) names the format found."""
    base = declared.split(";", 1)[0].strip().lower()
    return found in _ALIASES.get(base, ())


def is_known_type(declared: str) -> bool:
    return declared.split(";", 1)[0].strip().lower() in _ALIASES


def base64_size(data: str) -> int:
    """Decoded size of a base64 string, from its length and padding alone (nothing is decoded)."""
    length = len(data)
    padding = 2 if data.endswith("==") else 1 if data.endswith("=") else 0
    return length // 4 * 3 + {0: 0, 2: 1, 3: 2}.get(length % 4, 0) - padding


def base64_head(data: str) -> bytes:
    """The first HEAD_BYTES bytes a base64 string decodes to; raises ValueError if that prefix is not base64."""
    prefix = data[: HEAD_BYTES // 3 * 4]
    try:
        return base64.b64decode(prefix, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not valid base64 ({exc})") from None
