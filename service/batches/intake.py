"""Reading a batch from the wire: a JSON body, a streamed JSONL (`application/x-ndjson`) body, or a multipart
upload. Bodies are spooled to a temporary file as they arrive and parsed a request at a time from there (JSONL
line by line, JSON item by item: json_stream.py), so a 256 MB upload costs the API a few megabytes of memory, not
gigabytes of parsed objects."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from typing import IO, Any

from fastapi import Request
from pydantic import ValidationError

from service import validation
from service.api.errors import APIError, field_path
from service.batches import json_stream
from service.batches.schemas import BatchOptions
from service.batches.service import RawRequest, json_text_nul_free

SPOOL_IN_MEMORY = 1024 * 1024


async def spool(request: Request) -> IO[bytes]:
    """The raw body in a temporary file (in memory up to 1 MB), rewound."""
    out: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
    async for chunk in request.stream():
        out.write(chunk)
    out.seek(0)
    return out


def jsonl_requests(stream: IO[bytes]) -> Iterator[RawRequest]:
    """One request per non-blank line; index = line number - 1."""
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            data = validation.loads(line, field=f"requests[{number - 1}]")
        except json.JSONDecodeError as exc:
            # The position in the file (the line's own "line 1" would mislead): line N, column C.
            raise APIError(
                400, "invalid_json", f"line {number}, column {exc.colno}: not valid JSON ({exc.msg})",
                field=f"requests[{number - 1}]",
            ) from None  # fmt: skip
        except UnicodeDecodeError as exc:
            raise APIError(
                400, "invalid_json", f"line {number} is not valid JSON: {exc}", field=f"requests[{number - 1}]"
            ) from None
        except APIError as exc:
            raise APIError(exc.status, exc.type, f"line {number}: {exc.message}", field=exc.field) from None
        yield RawRequest(index=number - 1, data=data, nul_free=json_text_nul_free(line))


def options_error(exc: ValidationError) -> APIError:
    first = exc.errors()[0]
    field = field_path(tuple(first["loc"]))
    message = str(first["msg"]).removeprefix("Value error, ")
    return APIError(422, "invalid_request", f"{field}: {message}" if field else message, field=field)


def json_body(stream: IO[bytes]) -> tuple[BatchOptions, Iterator[RawRequest]]:
    """A JSON body `{requests: [...], metadata?, webhook_url?, completion_window?}` read from its spooled file
    twice, never whole: once for the options (they may follow the requests, and every row needs the window),
    checking each request is JSON, then again yielding the requests one at a time into the same validation and
    COPY as JSONL lines."""
    members: dict[str, Any] = {}
    for _ in json_stream.read_object(stream, array="requests", on_member=members.__setitem__, keep_items=False):
        pass
    try:
        options = BatchOptions.model_validate(members)
    except ValidationError as exc:
        raise options_error(exc) from None
    stream.seek(0)
    items = json_stream.read_object(stream, array="requests", on_member=_ignore)
    return options, (RawRequest(index=i.index, data=i.value, nul_free=i.nul_free) for i in items)


def _ignore(_name: str, _value: Any) -> None:
    """The second reading: the options were taken in the first."""


def parse_options(values: dict[str, Any]) -> BatchOptions:
    """Batch options given as form fields or query parameters (metadata as a JSON object string)."""
    # Blank fields (an HTML form sends them) mean "not given".
    data: dict[str, Any] = {k: v for k, v in values.items() if v is not None and v != ""}
    if isinstance(data.get("metadata"), str):
        try:
            data["metadata"] = validation.loads(data["metadata"], field="metadata")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise APIError(422, "invalid_request", "metadata: must be a JSON object", field="metadata") from None
    try:
        return BatchOptions.model_validate(data)
    except ValidationError as exc:
        raise options_error(exc) from None
