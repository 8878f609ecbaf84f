"""The Anthropic Message Batches API at `/anthropic/v1/messages/batches`, for the official SDK unchanged:
`anthropic.Anthropic(base_url="http://HOST:PORT/anthropic", api_key=KEY).messages.batches...`.

Same paths, bodies, objects, JSONL result lines and error shapes as Anthropic's; the batch engine underneath is
the native one (`service.batches`), with `api="anthropic"` so each API sees only its own batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import IO, Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from service.api.deps import CurrentKey, SessionDep, SettingsDep
from service.api.errors import APIError
from service.api.links import absolute_link
from service.batches import intake, json_stream, repository, service
from service.batches.results import RESULT_TYPE, error_of, jsonl
from service.batches.schemas import CUSTOM_ID_PATTERN, MAX_REQUESTS, BatchOptions
from service.batches.service import RawRequest
from service.config import Settings
from service.dropins.errors import anthropic_error_type, line_error, remember_session, render_anthropic, route_class
from service.jobs.schemas import MODEL_SCHEMA, PARAMS_SCHEMA
from service.limits import quotas
from service.models import ApiKey, Batch, BatchStatus, Job

API = "anthropic"
router = APIRouter(
    prefix="/anthropic/v1/messages/batches",
    tags=["Anthropic Message Batches (drop-in)"],
    route_class=route_class(render_anthropic),
    dependencies=[Depends(remember_session)],
)


class RequestCounts(BaseModel):
    processing: int
    succeeded: int
    errored: int
    canceled: int
    expired: int


class MessageBatch(BaseModel):
    id: str
    type: Literal["message_batch"] = "message_batch"
    processing_status: Literal["in_progress", "canceling", "ended"]
    request_counts: RequestCounts
    ended_at: datetime | None
    created_at: datetime
    expires_at: datetime
    archived_at: datetime | None = None
    cancel_initiated_at: datetime | None
    results_url: str | None


class MessageBatchPage(BaseModel):
    data: list[MessageBatch]
    first_id: str | None
    last_id: str | None
    has_more: bool


class DeletedMessageBatch(BaseModel):
    id: str
    type: Literal["message_batch_deleted"] = "message_batch_deleted"


def message_batch(request: Request, batch: Batch) -> MessageBatch:
    # Anthropic gives the results URL only once the batch has ended; the SDK's `results()` follows it.
    ended = batch.status == BatchStatus.ENDED
    return MessageBatch(
        id=batch.id,
        processing_status=batch.status,  # the same three values
        request_counts=RequestCounts(
            processing=batch.processing,
            succeeded=batch.succeeded,
            errored=batch.errored,
            canceled=batch.canceled,
            expired=batch.expired,
        ),
        ended_at=batch.ended_at,
        created_at=batch.created_at,
        expires_at=batch.expires_at,
        cancel_initiated_at=batch.cancel_initiated_at,
        results_url=absolute_link(request, "anthropic_batch_results", message_batch_id=batch.id) if ended else None,
    )


def result_line(job: Job) -> dict[str, Any]:
    """One line of the results file: the stored MiniMax answer is already an Anthropic message."""
    kind = RESULT_TYPE[job.status]
    result: dict[str, Any] = {"type": kind}
    if kind == "succeeded":
        result["message"] = (job.result or {}).get("raw")
    elif kind == "errored":
        error = error_of(job)
        http_status = (job.error or {}).get("http_status")
        status = http_status if isinstance(http_status, int) else None
        error["type"] = anthropic_error_type(status, error["type"], error=job.error or {})
        result["error"] = {"type": "error", "error": error}
    return {"custom_id": job.custom_id, "result": result}


def _only_requests(name: str, _value: Any) -> None:
    raise APIError(400, "invalid_request", f"{name}: Extra inputs are not permitted", field=name)


def _raw_requests(stream: IO[bytes]) -> Iterator[RawRequest]:
    """The body's requests, read from its spooled file one at a time (json_stream.py: never the whole body in
    memory), each `{custom_id, params: {model, ...}}` turned into the service's `{custom_id, model, format,
    params}`. A problem found past the first requests (an unknown member after the array) raises while the
    service stores them; its transaction then rolls back, so nothing is stored."""
    for item in json_stream.read_object(stream, array="requests", on_member=_only_requests):
        index = item.index
        if index >= MAX_REQUESTS:
            message = f"requests: a list of 1 to {MAX_REQUESTS:,} requests is required"
            raise APIError(400, "invalid_request", message, field="requests")
        if not isinstance(item.value, dict):
            yield RawRequest(index=index, data=item.value)  # the service names the line
            continue
        extra = sorted(set(item.value) - {"custom_id", "params"})
        if extra:
            field = f"requests[{index}].{extra[0]}"
            raise APIError(400, "invalid_request", f"{field}: Extra inputs are not permitted", field=field)
        data: dict[str, Any] = {"format": "anthropic", **item.value}
        params = item.value.get("params")
        if isinstance(params, dict):
            params = dict(params)
            if "model" in params:
                data["model"] = params.pop("model")
            if params.pop("stream", None):
                field = f"requests[{index}].params.stream"
                raise APIError(400, "invalid_request", f"{field}: batch requests do not stream", field=field)
            data["params"] = params
        yield RawRequest(index=index, data=data, nul_free=item.nul_free)


def _in_anthropic_terms(error: APIError) -> APIError:
    """Name a refused request's field as the user wrote it: `model` lives in `params` here."""
    line = line_error(error)
    if line is None:
        return error
    inner = "params.model" if line.field == "model" else line.field
    field = f"requests[{line.index}]" + (f".{inner}" if inner else "")
    who = f" (custom_id {line.custom_id})" if line.custom_id else ""
    return APIError(error.status, error.type, f"{field}{who}: {line.reason}", field=field)


def _create(session: Session, key: ApiKey, settings: Settings, body: IO[bytes]) -> Batch:
    requests = _raw_requests(body)
    try:
        return service.create(session, key=key, requests=requests, options=BatchOptions(), settings=settings, api=API)
    except APIError as exc:
        raise _in_anthropic_terms(exc) from None


_CREATE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["requests"],
                    "properties": {
                        "requests": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": MAX_REQUESTS,
                            "items": {
                                "type": "object",
                                "required": ["custom_id", "params"],
                                "properties": {
                                    "custom_id": {"type": "string", "pattern": CUSTOM_ID_PATTERN},
                                    "params": {
                                        **PARAMS_SCHEMA,
                                        "description": "A Messages body, with its model",
                                        "required": ["model", "max_tokens", "messages"],
                                        "properties": {
                                            "model": {"type": "string", **MODEL_SCHEMA},
                                            **PARAMS_SCHEMA["properties"],
                                        },
                                        "examples": [{"model": "MiniMax-M2.7", **e} for e in PARAMS_SCHEMA["examples"]],
                                    },
                                },
                            },
                        }
                    },
                }
            }
        },
    }
}


@router.post("", response_model=MessageBatch, summary="Create a Message Batch", openapi_extra=_CREATE_BODY)
async def create_message_batch(
    request: Request, session: SessionDep, key: CurrentKey, settings: SettingsDep
) -> MessageBatch:
    # Spooled to a temporary file as it arrives (bodies may be 256 MB), then parsed and stored off the event loop.
    await run_in_threadpool(quotas.precheck_upload, session, key=key, settings=settings)
    body = await intake.spool(request)
    try:
        batch = await run_in_threadpool(_create, session, key, settings, body)
    finally:
        body.close()
    return message_batch(request, batch)


@router.get("", response_model=MessageBatchPage, summary="List Message Batches, newest first")
def list_message_batches(
    request: Request,
    session: SessionDep,
    key: CurrentKey,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    before_id: str | None = None,
    after_id: str | None = None,
) -> MessageBatchPage:
    if before_id is not None and after_id is not None:
        raise APIError(400, "invalid_request", "give before_id or after_id, not both", field="before_id")
    rows, has_more = repository.list_page(
        session, tenant_id=key.tenant_id, api=API, limit=limit, before_id=before_id, after_id=after_id
    )
    return MessageBatchPage(
        data=[message_batch(request, b) for b in rows],
        first_id=rows[0].id if rows else None,
        last_id=rows[-1].id if rows else None,
        has_more=has_more,
    )


@router.get("/{message_batch_id}", response_model=MessageBatch, summary="Retrieve a Message Batch")
def retrieve_message_batch(
    message_batch_id: str, request: Request, session: SessionDep, key: CurrentKey
) -> MessageBatch:
    return message_batch(request, service.get(session, key=key, batch_id=message_batch_id, api=API))


@router.post("/{message_batch_id}/cancel", response_model=MessageBatch, summary="Cancel a Message Batch")
def cancel_message_batch(message_batch_id: str, request: Request, session: SessionDep, key: CurrentKey) -> MessageBatch:
    return message_batch(request, service.cancel(session, key=key, batch_id=message_batch_id, api=API))


@router.delete("/{message_batch_id}", response_model=DeletedMessageBatch, summary="Delete an ended Message Batch")
def delete_message_batch(message_batch_id: str, session: SessionDep, key: CurrentKey) -> DeletedMessageBatch:
    service.delete(session, key=key, batch_id=message_batch_id, api=API)
    return DeletedMessageBatch(id=message_batch_id)


@router.get(
    "/{message_batch_id}/results",
    name="anthropic_batch_results",
    summary="Results as JSONL, once the batch has ended",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/binary": {}}}},
)
def message_batch_results(
    message_batch_id: str, request: Request, session: SessionDep, key: CurrentKey
) -> StreamingResponse:
    batch = service.get(session, key=key, batch_id=message_batch_id, api=API)
    if batch.status != BatchStatus.ENDED:
        raise APIError(
            400,
            "batch_not_ended",
            f"Message Batch {batch.id} has not ended ({batch.status}); results are available once it has",
        )
    jobs = service.iter_results(request.app.state.session_factory, batch_id=batch.id)
    return StreamingResponse(jsonl(jobs, result_line), media_type="application/binary")
