"""Reading a batch from the wire: a JSON body, a streamed JSONL (`application/x-ndjson`) body, or a multipart
upload. Bodies are spooled to a temporary file as they arrive and parsed line by line from there, so a 256 MB
upload costs the API a few megabytes of memory, not gigabytes of parsed objects."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from typing import IO, Any

from fastapi import Request
from pydantic import ValidationError

from service import validation
from service.api.errors import APIError, field_path
from service.batches.schemas import BatchCreate, BatchOptions
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
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
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
    text = stream.read()  # parsed whole anyway: a JSON body is the small-batch path (JSONL streams)
    try:
        data = validation.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    nul_free = json_text_nul_free(text)
    try:
        body = BatchCreate.model_validate(data)
    except ValidationError as exc:
        raise options_error(exc) from None
    options = BatchOptions.model_validate(body.model_dump(exclude={"requests"}))
    return options, (RawRequest(index=i, data=r, nul_free=nul_free) for i, r in enumerate(body.requests))


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
