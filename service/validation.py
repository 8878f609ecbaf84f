"""The rules every value we accept passes, the same way on every path (issue 14).

A JSON value is refused, with the field at fault, when it holds something no later step can store or send:
- NaN or +/-Infinity (Python's `json` reads them, Postgres JSONB and MiniMax refuse them; `1e400` reads as inf);
- an integer of more than `MAX_INT_DIGITS` digits (Python refuses to convert it: a ValueError, not a 4xx);
- a lone UTF-16 surrogate (`"\\ud800"`: such a string cannot be encoded as UTF-8, so neither stored nor sent);
- nesting deeper than `MAX_DEPTH` (recursive code further on, ours and the libraries', hits RecursionError
  at a few hundred levels; no MiniMax request needs more than a few dozen);
- and, where the caller asks, a NUL character (Postgres text cannot hold it; a 422, as it has always been).

`loads` parses JSON text under these rules (every body, line and JSON-text field we parse goes through it);
`check_value` applies them to a value that was parsed elsewhere (job params, each batch line's params, schedule
templates: `service.jobs.validation.check_request` calls it, so every path that makes a job does too).
Both raise `APIError(400, ...)` naming the field, e.g. `requests[3].params.temperature`.

`Moment` is the datetime every request field and query parameter takes: with a timezone, and convertible to
UTC (`0001-01-01T00:00:00+14:00` is a valid RFC 3339 time before year 1 in UTC: an OverflowError later).
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator

from service.api.errors import APIError

MAX_DEPTH = 64
# Python's own limit for int <-> str (sys.get_int_max_str_digits() by default); past it `int()` raises.
MAX_INT_DIGITS = 4300
_SURROGATE = re.compile("[\ud800-\udfff]")
# Field names echo the user's keys; a long one is cut in the error message.
_KEY_SHOWN = 80


class _HugeInt:
    """What `loads` reads an over-long integer literal as, so the walk can name where it was."""

    __slots__ = ("digits",)

    def __init__(self, digits: int) -> None:
        self.digits = digits


class _Constant:
    """What `loads` reads `NaN`, `Infinity` and `-Infinity` as (not JSON, though Python's parser takes them)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


def _parse_int(text: str) -> int | _HugeInt:
    digits = len(text) - (text[0] == "-")
    return _HugeInt(digits) if digits > MAX_INT_DIGITS else int(text)


# One decoder, built once: `json.loads` with hooks builds a new one per call, which costs more than the parse of a
# typical batch line.
_DECODER = json.JSONDecoder(parse_int=_parse_int, parse_constant=_Constant)
DECODER = _DECODER  # for parsers that decode piece by piece (service.batches.json_stream)


_NUL = "contains a NUL character (\\u0000); remove it"


def _invalid(field: str | None, reason: str) -> APIError:
    status = 422 if reason.endswith(_NUL) else 400
    return APIError(status, "invalid_request", f"{field}: {reason}" if field else reason, field=field)


def _key(name: str) -> str:
    """A key as it may appear in a field path: no surrogate (the error body must encode), not too long."""
    if _SURROGATE.search(name):
        name = name.encode("utf-8", "backslashreplace").decode("utf-8")
    return name if len(name) <= _KEY_SHOWN else name[:_KEY_SHOWN] + "..."


def _string_problem(text: str, nul: bool) -> str | None:
    if nul and "\x00" in text:
        return _NUL
    if not text.isascii() and _SURROGATE.search(text):
        return "contains a lone UTF-16 surrogate (e.g. \\ud800), which is not text; send valid Unicode"
    return None


def _problem(value: Any, depth: int, nul: bool) -> tuple[list[str | int], str] | None:
    """(the path to the first bad value, innermost first; why), or None. Recursion is bounded by MAX_DEPTH."""
    if isinstance(value, str):
        reason = _string_problem(value, nul)
        return ([], reason) if reason else None
    if isinstance(value, dict | list):
        if depth >= MAX_DEPTH:
            return [], f"is nested more than {MAX_DEPTH} levels deep"
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for name, item in items:
            if isinstance(name, str):
                reason = _string_problem(name, nul)
                if reason is not None:
                    return [name], f"the key {_key(name)!r} {reason}"
            found = _problem(item, depth + 1, nul)
            if found is not None:
                found[0].append(name)
                return found
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else ([], f"{value} is not a finite number")
    if isinstance(value, _HugeInt):
        return [], f"an integer of {value.digits:,} digits is more than the {MAX_INT_DIGITS:,} we accept"
    if isinstance(value, _Constant):
        return [], f"{value.name} is not a JSON number; send a finite number"
    return None


def _path(field: str | None, inner: list[str | int]) -> str | None:
    out = field or ""
    for part in reversed(inner):
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{_key(part)}" if out else _key(part)
    return out or None


def check_value(value: Any, *, field: str | None, nul: bool = False) -> None:
    """Raise a 400 naming the first value under `field` that breaks the rules above (`nul`: NUL counts)."""
    found = _problem(value, 0, nul)
    if found is not None:
        inner, reason = found
        raise _invalid(_path(field, inner), reason)


def loads(text: str | bytes, *, field: str | None = None) -> Any:
    """`json.loads` under the rules above; `field` names where the text sits (e.g. `requests[3]`, `metadata`).

    JSONDecodeError and UnicodeDecodeError pass through (each caller words "not JSON" its own way); every
    rule broken is a 400 naming the field."""
    try:
        if isinstance(text, bytes):
            text = text.decode(json.detect_encoding(text), "surrogatepass")  # as json.loads reads bytes
        elif text.startswith("\ufeff"):
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        value = _DECODER.decode(text)
    except RecursionError:
        raise _invalid(field, f"is nested more than {MAX_DEPTH} levels deep") from None
    check_value(value, field=field)
    return value


# --- datetimes -----------------------------------------------------------------------------------------------

# A margin either side: code further on adds and subtracts hours and days (DST margins, periods).
_EARLIEST = datetime(1, 1, 8, tzinfo=UTC)
_LATEST = datetime(9999, 12, 24, tzinfo=UTC)


def _moment(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("give a timezone, e.g. 2026-01-01T00:00:00Z")
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not _EARLIEST <= utc <= _LATEST:
        first, last = _EARLIEST.date().isoformat(), _LATEST.date().isoformat()
        raise ValueError(f"out of range: give a time from {first} to {last} (UTC)")
    return value


Moment = Annotated[datetime, AfterValidator(_moment)]
"""A datetime with a timezone that converts to UTC inside years 1-9999, for every request field and query."""
