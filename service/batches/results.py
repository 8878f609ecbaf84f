"""A batch's results as JSONL lines, streamed page by page."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from service.models import Job

RESULT_TYPE = {"succeeded": "succeeded", "failed": "errored", "canceled": "canceled", "expired": "expired"}
STATUS_FOR_RESULT = {v: k for k, v in RESULT_TYPE.items()}


def error_of(job: Job) -> dict[str, Any]:
    error = job.error or {}
    return {"type": str(error.get("type") or "api_error"), "message": str(error.get("message") or job.status)}


def native_line(job: Job) -> dict[str, Any]:
    """{"custom_id", "job_id", "result": {"type": succeeded + message + usage | errored + error | canceled | expired}}.

    `message` is MiniMax's response as it came, in the request's format (Anthropic message or chat completion).
    """
    kind = RESULT_TYPE[job.status]
    result: dict[str, Any] = {"type": kind}
    if kind == "succeeded" and job.result is not None:
        result["message"] = job.result.get("raw")
        result["usage"] = job.result.get("usage")
    elif kind == "errored":
        result["error"] = error_of(job)
    return {"custom_id": job.custom_id, "job_id": job.id, "result": result}


# Lines are sent in chunks of about this size: a streamed response costs a thread hop and a socket write per
# chunk, which one line at a time made a 400-line download take seconds under load.
CHUNK_BYTES = 64 * 1024


def jsonl(jobs: Iterable[Job], line: Callable[[Job], dict[str, Any]]) -> Iterator[bytes]:
    chunk: list[bytes] = []
    size = 0
    for job in jobs:
        encoded = json.dumps(line(job), separators=(",", ":")).encode() + b"\n"
        chunk.append(encoded)
        size += len(encoded)
        if size >= CHUNK_BYTES:
            yield b"".join(chunk)
            chunk, size = [], 0
    if chunk:
        yield b"".join(chunk)
