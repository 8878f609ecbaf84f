"""Intake checks for image and video parts (called by `service.jobs.validation.check_request`, so jobs and every
batch line get them): the options, where the bytes are, and for inline base64 the format by content and the size.

Nothing is decoded beyond the first bytes: the size comes from the base64 length, the format from the first
64 bytes; the last characters are checked for padding. A URL is checked by the
SSRF guard's static rules but not resolved: MiniMax fetches it from its own network, where our DNS answer means
nothing; what is plainly internal (loopback, private and link-local literals, `localhost`, single-label and
`.internal`/`.local` names) is refused. A `mmjobs_file://` id is checked for shape here; that the file exists and
belongs to the tenant is checked by the worker before the call (a missing file fails the job, permanently).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from service import netguard
from service.api.errors import APIError
from service.media import formats
from service.media.parts import BadPart, Inline, MediaPart, Remote, iter_parts, locate

DETAILS = ("low", "default", "high")
FPS_RANGE = (0.2, 5.0)
MAX_LONG_SIDE_PIXEL = 8192


def _invalid(field: str, message: str) -> APIError:
    return APIError(422, "invalid_request", f"{field}: {message}", field=field)


def check_media(params: Mapping[str, Any], fmt: str) -> None:
    """Raise a 422 naming the field for the first image or video part that MiniMax would refuse."""
    for media in iter_parts(params, fmt):
        try:
            location = locate(media)
        except BadPart as exc:
            raise _invalid(exc.field, exc.message) from None
        _check_options(media)
        if isinstance(location, Inline):
            check_inline(location, media.kind)
        elif isinstance(location, Remote):
            problem = remote_url_problem(location.url)
            if problem is not None:
                raise _invalid(location.field, problem)


def _check_options(media: MediaPart) -> None:
    holder, at = media.holder, media.holder_path
    detail = holder.get("detail")
    if detail is not None and detail not in DETAILS:
        raise _invalid(f"{at}.detail", f"{detail!r} is not one of {', '.join(DETAILS)}")
    fps = holder.get("fps")
    if fps is not None:
        if media.kind != "video":
            raise _invalid(f"{at}.fps", "applies to video only")
        if isinstance(fps, bool) or not isinstance(fps, int | float) or not math.isfinite(fps):
            raise _invalid(f"{at}.fps", "must be a number")
        low, high = FPS_RANGE
        if not low <= fps <= high:
            raise _invalid(f"{at}.fps", f"{fps} is outside [{low:g}, {high:g}] frames per second")
    pixels = holder.get("max_long_side_pixel")
    if pixels is not None:
        if isinstance(pixels, bool) or not isinstance(pixels, int):
            raise _invalid(f"{at}.max_long_side_pixel", "must be an integer")
        if not 1 <= pixels <= MAX_LONG_SIDE_PIXEL:
            raise _invalid(f"{at}.max_long_side_pixel", f"{pixels} is outside [1, {MAX_LONG_SIDE_PIXEL}]")


def size_limit(kind: formats.Kind) -> int:
    return formats.IMAGE_MAX_BYTES if kind == "image" else formats.INLINE_VIDEO_MAX_BYTES


def check_inline(inline: Inline, kind: formats.Kind) -> formats.Format:
    """Check a base64 payload without decoding it: shape, size, alphabet, and format by its first bytes."""
    field, text, start = inline.field, inline.text, inline.start
    if inline.length == 0:
        raise _invalid(field, "is empty")
    if inline.length % 4:
        raise _invalid(field, f"is not valid base64: its length {inline.length} is not a multiple of 4")
    padding = 2 if text.endswith("==") else 1 if text.endswith("=") else 0
    size = inline.length // 4 * 3 - padding
    limit = size_limit(kind)
    if size > limit:
        hint = "" if kind == "image" else "; upload larger videos (up to 512 MB) with POST /v1/files"
        raise _invalid(field, f"the {kind} is {size:,} bytes, over MiniMax's {limit // formats.MB} MB limit{hint}")
    # The first bytes and the last 4 characters are decoded; the rest is only checked to be ASCII (free on a
    # Python str). A stray character in the middle is MiniMax's to refuse: scanning 67 MB here would cost about
    # a second of CPU per request.
    try:
        if not text.isascii():
            raise ValueError("not valid base64 (non-ASCII characters)")
        formats.base64_head(text[-4:])
        head = formats.base64_head(text[start : start + formats.HEAD_BYTES // 3 * 4])
    except ValueError as exc:
        raise _invalid(field, str(exc)) from None
    found = formats.sniff(head)
    if found is None:
        raise _invalid(field, f"the content is not a supported {kind} format ({formats.supported_names(kind)})")
    if found.kind != kind:
        raise _invalid(field, f"the content is {found.name}, a {found.kind}, in a {kind} part")
    declared = inline.media_type
    type_field = field.removesuffix(".data") + ".media_type" if field.endswith(".data") else field
    if declared is not None:
        if not formats.is_known_type(declared):
            raise _invalid(type_field, f"{declared!r} is not a supported type ({formats.supported_names(kind)})")
        if not formats.matches(declared, found):
            raise _invalid(type_field, f"says {declared} but the content is {found.name} ({found.media_type})")
    return found


def remote_url_problem(url: str) -> str | None:
    """Why MiniMax should not be sent to fetch `url`: the SSRF guard's rules (`netguard.parse`, the same host
    normalization as for webhooks) applied without DNS, plus names that are plainly internal."""
    try:
        parsed = netguard.parse(url)
    except netguard.UnsafeURL as exc:
        return str(exc).replace("can be called", "can be fetched")
    if parsed.literal is not None:
        reason = netguard.refusal(parsed.literal)
        return f"{reason}; only public addresses can be fetched" if reason else None
    if netguard.internal_name(parsed.host):
        return f"{parsed.host!r} is not a public host name"
    return None
