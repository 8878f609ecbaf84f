"""The OpenAI Batch API at `/openai/v1`, for the official SDK unchanged:
`openai.OpenAI(base_url="http://HOST:PORT/openai/v1", api_key=KEY)`: `files.create(purpose="batch")`,
`batches.create / retrieve / list / cancel`, `files.content(output_file_id)`.

Same paths, bodies, objects, output lines and error shapes as OpenAI's; the batch engine underneath is the
native one (`service.batches`), with `api="openai"` so each API sees only its own batches.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import IO, Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request, UploadFile
from fastapi import File as FormFile
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy.orm import Session
from starlette.responses import Response

from service import validation
from service.api.deps import CurrentKey, SessionDep, SettingsDep
from service.api.errors import APIError
from service.batches import repository as batches_repository
from service.batches import service
from service.batches.schemas import BatchOptions
from service.batches.service import RawRequest
from service.dropins import repository
from service.dropins.errors import line_error, remember_session, render_openai, route_class
from service.dropins.openai_objects import (
    ENDPOINT,
    BatchPage,
    FileDeleted,
    FileObject,
    OpenAIBatch,
    generated_content,
    generated_file,
    generated_file_id,
    openai_batch,
    parse_generated_file_id,
    status_of,
    uploaded_file,
)
from service.files import service as files
from service.files import storage
from service.jobs.schemas import Metadata
from service.models import ApiKey, Batch, BatchStatus

API = "openai"
router = APIRouter(
    prefix="/openai/v1",
    tags=["OpenAI Batch (drop-in)"],
    route_class=route_class(render_openai),
    dependencies=[Depends(remember_session)],
)


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: Metadata | None = None
    # Accepted for compatibility and ignored: output and error files are written from the batch's jobs on demand.
    output_expires_after: dict[str, Any] | None = None


def present(session: Session, batches: list[Batch]) -> list[OpenAIBatch]:
    totals = repository.totals(session, batch_ids=[b.id for b in batches])
    return [openai_batch(b, totals.get(b.id, repository.BatchTotals())) for b in batches]


# --- files ---------------------------------------------------------------------------------------------------


@router.post("/files", response_model=FileObject, summary="Upload a JSONL batch input file")
def upload_file(
    session: SessionDep,
    key: CurrentKey,
    settings: SettingsDep,
    file: Annotated[UploadFile, FormFile(description="JSONL, one request per line")],
    purpose: Annotated[str, Form(description="batch")],
) -> FileObject:
    # The multipart parser has already spooled the upload to a temporary file; it is copied to the files
    # directory in chunks, never held in memory.
    stored = files.create(
        session, key=key, settings=settings, source=file.file, filename=file.filename or "", purpose=purpose
    )
    return uploaded_file(stored)


@router.get("/files/{file_id}", response_model=FileObject, summary="Retrieve a file")
def retrieve_file(file_id: str, request: Request, session: SessionDep, key: CurrentKey) -> FileObject:
    generated = parse_generated_file_id(file_id)
    if generated is None:
        return uploaded_file(files.get(session, key=key, file_id=file_id))
    kind, batch = _generated(session, key, file_id, generated)
    return generated_file(request.app.state.session_factory, batch, kind)


@router.get(
    "/files/{file_id}/content",
    summary="A file's content: the uploaded bytes, or a batch's output or error file written as it streams",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def file_content(
    file_id: str, request: Request, session: SessionDep, key: CurrentKey, settings: SettingsDep
) -> Response:
    generated = parse_generated_file_id(file_id)
    if generated is None:
        file = files.get(session, key=key, file_id=file_id)
        path = storage.path_for(settings, file.id)
        if not path.is_file():
            raise APIError(500, "file_missing", f"the bytes of {file.id} are not in the files directory")
        return FileResponse(path, media_type="application/octet-stream")
    kind, batch = _generated(session, key, file_id, generated)
    content = generated_content(request.app.state.session_factory, batch_id=batch.id, kind=kind)
    return StreamingResponse(content, media_type="application/octet-stream")


@router.delete("/files/{file_id}", response_model=FileDeleted, summary="Delete an uploaded file")
def delete_file(file_id: str, session: SessionDep, key: CurrentKey, settings: SettingsDep) -> FileDeleted:
    if parse_generated_file_id(file_id) is not None:
        raise APIError(
            400,
            "invalid_request",
            f"{file_id} is written from its batch's results; it cannot be deleted",
            field="file_id",
        )
    files.delete(session, key=key, settings=settings, file_id=file_id)
    return FileDeleted(id=file_id)


def _generated(session: Session, key: ApiKey, file_id: str, generated: tuple[str, str]) -> tuple[str, Batch]:
    kind, batch_id = generated
    batch = batches_repository.get(session, tenant_id=key.tenant_id, batch_id=batch_id, api=API)
    # The file exists only once the batch has ended with lines for it, as its id on the batch says.
    if batch is None or generated_file_id(batch, kind) != file_id:
        raise APIError(404, "not_found", f"No such File object: {file_id}", field="file_id")
    return kind, batch


# --- batches -------------------------------------------------------------------------------------------------


def _invalid(field: str, message: str) -> APIError:
    return APIError(400, "invalid_request", f"{field}: {message}", field=field)


def _raw_requests(stream: IO[bytes], endpoint: str) -> Iterator[RawRequest]:
    """The input file's lines `{custom_id, method, url, body: {model, ...}}` as the service's requests."""
    for number, raw_line in enumerate(stream, start=1):
        if not raw_line.strip():
            continue
        try:
            line = validation.loads(raw_line)  # NaN, huge integers, surrogates, depth: 400 naming the field
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise APIError(400, "invalid_json", f"line {number}: not valid JSON: {exc}") from None
        except APIError as exc:
            raise APIError(exc.status, exc.type, f"line {number}: {exc.message}", field=exc.field) from None
        where = f"line {number}"
        if not isinstance(line, dict):
            raise APIError(400, "invalid_request", f"{where}: each line must be a JSON object")
        extra = sorted(set(line) - {"custom_id", "method", "url", "body"})
        if extra:
            raise APIError(400, "invalid_request", f"{where}: {extra[0]}: unknown field", field=extra[0])
        if line.get("method") != "POST":
            raise APIError(400, "invalid_request", f"{where}: method: must be POST", field="method")
        if line.get("url") != endpoint:
            raise APIError(
                400, "invalid_request", f"{where}: url: must be {endpoint}, the batch's endpoint", field="url"
            )
        body = line.get("body")
        if not isinstance(body, dict):
            raise APIError(400, "invalid_request", f"{where}: body: must be a JSON object", field="body")
        params = dict(body)
        data: dict[str, Any] = {"format": "openai", "params": params}
        if "custom_id" in line:
            data["custom_id"] = line["custom_id"]
        if "model" in params:
            data["model"] = params.pop("model")
        if params.pop("stream", None):
            raise APIError(
                400, "invalid_request", f"{where}: body.stream: batch requests do not stream", field="body.stream"
            )
        yield RawRequest(index=number - 1, data=data)


def _in_openai_terms(error: APIError) -> APIError:
    """Name a refused line and its field as the file has them: `model` and the params live in `body`."""
    line = line_error(error)
    if line is None:
        if error.field == "requests":  # e.g. an empty file
            return APIError(error.status, error.type, f"input_file_id: {error.message}", field="input_file_id")
        return error
    field = {"model": "body.model", "params": "body"}.get(line.field) or re.sub(r"^params\b", "body", line.field)
    who = f" (custom_id {line.custom_id})" if line.custom_id else ""
    message = f"line {line.index + 1}{who}: " + (f"{field}: " if field else "") + line.reason
    return APIError(error.status, error.type, message, field=field or None)


@router.post("/batches", response_model=OpenAIBatch, summary="Create a batch from an uploaded JSONL file")
def create_batch(body: BatchCreate, session: SessionDep, key: CurrentKey, settings: SettingsDep) -> OpenAIBatch:
    if body.endpoint != ENDPOINT:
        raise _invalid("endpoint", f"{body.endpoint!r} is not supported; MiniMax batches run {ENDPOINT}")
    if body.completion_window != "24h":
        raise _invalid("completion_window", "only '24h' is supported")
    try:
        file = files.get(session, key=key, file_id=body.input_file_id)
    except APIError as exc:
        raise APIError(exc.status, exc.type, exc.message, field="input_file_id") from None
    if file.purpose != "batch":
        raise _invalid("input_file_id", f"{file.id} was uploaded with purpose {file.purpose!r}, not 'batch'")
    # reasoning_split on by default: `content` is the answer alone, as OpenAI's batch clients parse it (M2.x would
    # otherwise put <think>...</think> in front of it); a line that sets its own keeps it.
    options = BatchOptions(metadata=body.metadata or {}, completion_window=body.completion_window, reasoning_split=True)
    with files.open_bytes(settings, file) as stream:
        try:
            batch = service.create(
                session,
                key=key,
                requests=_raw_requests(stream, body.endpoint),
                options=options,
                settings=settings,
                api=API,
                input_file_id=file.id,
                endpoint=body.endpoint,
            )
        except APIError as exc:
            raise _in_openai_terms(exc) from None
    return present(session, [batch])[0]


@router.get("/batches", response_model=BatchPage, summary="List batches, newest first")
def list_batches(
    session: SessionDep,
    key: CurrentKey,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> BatchPage:
    rows, has_more = batches_repository.list_page(
        session, tenant_id=key.tenant_id, api=API, limit=limit, after_id=after
    )
    return BatchPage(
        data=present(session, rows),
        first_id=rows[0].id if rows else None,
        last_id=rows[-1].id if rows else None,
        has_more=has_more,
    )


@router.get("/batches/{batch_id}", response_model=OpenAIBatch, summary="Retrieve a batch")
def retrieve_batch(batch_id: str, session: SessionDep, key: CurrentKey) -> OpenAIBatch:
    return present(session, [service.get(session, key=key, batch_id=batch_id, api=API)])[0]


@router.post("/batches/{batch_id}/cancel", response_model=OpenAIBatch, summary="Cancel a batch")
def cancel_batch(batch_id: str, session: SessionDep, key: CurrentKey) -> OpenAIBatch:
    batch = service.get(session, key=key, batch_id=batch_id, api=API)
    if batch.status == BatchStatus.ENDED:
        raise APIError(409, "batch_ended", f"Cannot cancel a batch with status '{status_of(batch)}'.")
    return present(session, [service.cancel(session, key=key, batch_id=batch_id, api=API)])[0]
