"""The OpenAI drop-in's objects (openai-python `types/batch.py`, `types/file_object.py`) and output lines.

Output and error files are not stored: their ids name the batch (`file-output-<batch>`, `file-errors-<batch>`)
and their content is written from the batch's jobs as it streams.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy.orm import Session, sessionmaker

from service.batches import service
from service.batches.results import error_of, jsonl
from service.dropins.errors import failure_status
from service.dropins.repository import BatchTotals
from service.models import Batch, BatchStatus, File, Job

ENDPOINT = "/v1/chat/completions"
OUTPUT, ERRORS = "output", "errors"
# Which job statuses each generated file holds.
FILE_STATUSES = {OUTPUT: ("succeeded",), ERRORS: ("failed", "canceled", "expired")}
_BATCH_PREFIX = "batch_"


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class RequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class InputTokensDetails(BaseModel):
    cached_tokens: int


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int


class BatchUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class OpenAIBatch(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: None = None  # input problems are refused at creation (400), so a batch never carries any
    input_file_id: str
    completion_window: str
    status: Literal[
        "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
    ]
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None = None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: RequestCounts
    metadata: dict[str, str] | None
    model: str | None
    usage: BatchUsage


class BatchPage(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIBatch]
    first_id: str | None
    last_id: str | None
    has_more: bool


def _unix(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def status_of(batch: Batch) -> str:
    if batch.status == BatchStatus.IN_PROGRESS:
        return "in_progress"
    if batch.status == BatchStatus.CANCELING:
        return "cancelling"
    if batch.cancel_initiated_at is not None:
        return "cancelled"
    return "expired" if batch.expired else "completed"


def generated_file_id(batch: Batch, kind: str) -> str | None:
    """The output (or error) file's id once the batch has ended with lines for it, as OpenAI gives them."""
    if batch.status != BatchStatus.ENDED:
        return None
    count = batch.succeeded if kind == OUTPUT else batch.errored + batch.canceled + batch.expired
    return f"file-{kind}-{batch.id.removeprefix(_BATCH_PREFIX)}" if count else None


def parse_generated_file_id(file_id: str) -> tuple[str, str] | None:
    """(kind, batch id) for a generated file's id, else None."""
    for kind in (OUTPUT, ERRORS):
        prefix = f"file-{kind}-"
        if file_id.startswith(prefix) and len(file_id) > len(prefix):
            return kind, _BATCH_PREFIX + file_id.removeprefix(prefix)
    return None


def openai_batch(batch: Batch, totals: BatchTotals) -> OpenAIBatch:
    status = status_of(batch)
    window_hours = max(1, round((batch.expires_at - batch.created_at).total_seconds() / 3600))
    input_tokens = totals.input_tokens + totals.cache_read_tokens + totals.cache_write_tokens
    ended = _unix(batch.ended_at)
    return OpenAIBatch(
        id=batch.id,
        endpoint=batch.endpoint or ENDPOINT,
        input_file_id=batch.input_file_id or "",
        completion_window=f"{window_hours}h",
        status=status,  # one of the literals, from status_of
        output_file_id=generated_file_id(batch, OUTPUT),
        error_file_id=generated_file_id(batch, ERRORS),
        created_at=_unix(batch.created_at) or 0,
        # Requests are validated while the batch is created, so it is in progress from its first moment.
        in_progress_at=_unix(batch.created_at),
        expires_at=_unix(batch.expires_at),
        finalizing_at=ended if status == "completed" else None,
        completed_at=ended if status == "completed" else None,
        expired_at=ended if status == "expired" else None,
        cancelling_at=_unix(batch.cancel_initiated_at),
        cancelled_at=ended if status == "cancelled" else None,
        # Canceled and expired requests are in the error file but, as at OpenAI, not counted as failed.
        request_counts=RequestCounts(total=batch.request_total, completed=batch.succeeded, failed=batch.errored),
        metadata=batch.meta or None,
        model=totals.model,
        usage=BatchUsage(
            input_tokens=input_tokens,
            input_tokens_details=InputTokensDetails(cached_tokens=totals.cache_read_tokens),
            output_tokens=totals.output_tokens,
            output_tokens_details=OutputTokensDetails(reasoning_tokens=0),  # MiniMax does not report it apart
            total_tokens=input_tokens + totals.output_tokens,
        ),
    )


def uploaded_file(file: File) -> FileObject:
    return FileObject(
        id=file.id,
        bytes=file.size,
        created_at=_unix(file.created_at) or 0,
        filename=file.filename,
        purpose=file.purpose,
    )


_CANCELED = {"code": "batch_cancelled", "message": "This request was not executed because the batch was cancelled."}
_EXPIRED = {
    "code": "batch_expired",
    "message": "This request could not be executed before the completion window expired.",
}


def output_line(job: Job) -> dict[str, Any]:
    """A line of the output or error file, by the job's final status."""
    result = job.result or {}
    line: dict[str, Any] = {"id": job.id, "custom_id": job.custom_id, "response": None, "error": None}
    if job.status == "succeeded":
        request_id = result.get("upstream_request_id") or job.id
        line["response"] = {"status_code": 200, "request_id": request_id, "body": result.get("raw")}
    elif job.status == "canceled":
        line["error"] = dict(_CANCELED)
    elif job.status == "expired":
        line["error"] = dict(_EXPIRED)
    else:
        error = error_of(job)
        http_status = failure_status(job.error or {})  # the upstream's status, never 200 for a failure
        if http_status is not None:
            body = {"error": {"message": error["message"], "type": error["type"], "param": None, "code": None}}
            line["response"] = {"status_code": http_status, "request_id": job.id, "body": body}
        line["error"] = {"code": error["type"], "message": error["message"]}
    return line


def generated_content(factory: sessionmaker[Session], *, batch_id: str, kind: str) -> Iterator[bytes]:
    jobs = service.iter_results(factory, batch_id=batch_id, statuses=FILE_STATUSES[kind])
    return jsonl(jobs, output_line)


def generated_file(factory: sessionmaker[Session], batch: Batch, kind: str) -> FileObject:
    """A generated file's object. Its size is counted by writing it once (constant memory, a full read)."""
    size = sum(len(chunk) for chunk in generated_content(factory, batch_id=batch.id, kind=kind))
    return FileObject(
        id=generated_file_id(batch, kind) or "",
        bytes=size,
        created_at=_unix(batch.ended_at) or 0,
        filename=f"{batch.id}_{kind}.jsonl",
        purpose="batch_output",
    )
