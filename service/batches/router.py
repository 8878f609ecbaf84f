from __future__ import annotations

from typing import IO, Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from service.api.deps import CurrentKey, SessionDep, SettingsDep
from service.api.errors import APIError
from service.batches import intake, present, service
from service.batches.results import STATUS_FOR_RESULT, jsonl, native_line
from service.batches.schemas import BatchCreate, BatchList, BatchOut
from service.jobs.schemas import Estimate
from service.limits import quotas

router = APIRouter(prefix="/v1/batches", tags=["batches"])

_JSONL_TYPES = ("application/x-ndjson", "application/jsonl", "application/x-jsonlines")
_CREATE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": BatchCreate.model_json_schema()},
            "application/x-ndjson": {
                "schema": {"type": "string", "description": "One request per line: {custom_id, model, format, params}"}
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "JSONL, one request per line"},
                        "metadata": {"type": "string", "description": "JSON object of strings"},
                        "webhook_url": {"type": "string"},
                        "completion_window": {"type": "string", "example": "24h"},
                    },
                }
            },
        },
    }
}


@router.post(
    "",
    status_code=202,
    response_model=BatchOut | Estimate,
    responses={200: {"model": Estimate, "description": "dry_run: the estimate"}},
    summary="Submit a batch of up to 100,000 requests",
    description="As JSON `{requests: [...], metadata?, webhook_url?, completion_window?}`, as a streamed JSONL body "
    "(`application/x-ndjson`; options as query parameters, metadata as a JSON string), or as a multipart upload "
    "(field `file`, plus option fields). Every line is validated like a single job; one bad line rejects the "
    "whole batch with its line number and field, and nothing is stored.",
    openapi_extra=_CREATE_BODY,
)
async def create_batch(
    request: Request,
    response: Response,
    session: SessionDep,
    key: CurrentKey,
    settings: SettingsDep,
    dry_run: Annotated[bool, Query(description="Validate and estimate tokens and cost; store nothing.")] = False,
) -> BatchOut | Estimate:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not dry_run:  # refused before the upload, not after it (the exact check runs once the rows are written)
        await run_in_threadpool(quotas.precheck_upload, session, key=key, settings=settings)
    body: IO[bytes] | None = None
    try:
        if content_type == "application/json":
            body = await intake.spool(request)
            options, requests = await run_in_threadpool(intake.json_body, body)
        elif content_type in _JSONL_TYPES:
            body = await intake.spool(request)
            options = intake.parse_options({k: v for k, v in request.query_params.items() if k != "dry_run"})
            requests = intake.jsonl_requests(body)
        elif content_type == "multipart/form-data":
            form = await request.form(max_files=1)
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise APIError(422, "invalid_request", "file: attach the JSONL as the `file` field", field="file")
            options = intake.parse_options({k: v for k, v in form.items() if k != "file"})
            requests = intake.jsonl_requests(upload.file)
        else:
            raise APIError(
                415,
                "unsupported_media_type",
                "send application/json, application/x-ndjson or multipart/form-data",
                field="content-type",
            )
        if dry_run:
            response.status_code = 200
            return await run_in_threadpool(lambda: service.estimate(requests, settings=settings))
        batch = await run_in_threadpool(
            lambda: service.create(session, key=key, requests=requests, options=options, settings=settings)
        )
        return await run_in_threadpool(present.batch_out, request, session, batch)
    finally:
        if body is not None:
            body.close()


@router.get("/{batch_id}", response_model=BatchOut, summary="Get a batch: status, exact counts, usage, ETA")
def get_batch(batch_id: str, request: Request, session: SessionDep, key: CurrentKey) -> BatchOut:
    return present.batch_out(request, session, service.get(session, key=key, batch_id=batch_id, api="native"))


@router.get("", response_model=BatchList, summary="List batches, newest first")
def list_batches(
    request: Request,
    session: SessionDep,
    key: CurrentKey,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    cursor: Annotated[str | None, Query(description="The previous page's next_cursor.")] = None,
) -> BatchList:
    from service.batches import repository

    rows, has_more = repository.list_page(session, tenant_id=key.tenant_id, api="native", limit=limit, after_id=cursor)
    return BatchList(
        data=[present.batch_out(request, session, b) for b in rows],
        has_more=has_more,
        next_cursor=rows[-1].id if has_more and rows else None,
    )


@router.post("/{batch_id}/cancel", response_model=BatchOut, summary="Cancel: queued requests at once, running finish")
def cancel_batch(batch_id: str, request: Request, session: SessionDep, key: CurrentKey) -> BatchOut:
    return present.batch_out(request, session, service.cancel(session, key=key, batch_id=batch_id, api="native"))


@router.delete("/{batch_id}", status_code=204, summary="Delete an ended batch and its results")
def delete_batch(batch_id: str, session: SessionDep, key: CurrentKey) -> Response:
    service.delete(session, key=key, batch_id=batch_id, api="native")
    return Response(status_code=204)


@router.get(
    "/{batch_id}/results",
    summary="Results as JSONL, streamed",
    description="One line per finished request: `{custom_id, job_id, result: {type: succeeded, message, usage} | "
    "{type: errored, error} | {type: canceled} | {type: expired}}`. Available while the batch runs (the part "
    "finished so far); `status` filters by result type (repeatable).",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}}}},
)
def batch_results(
    batch_id: str,
    request: Request,
    session: SessionDep,
    key: CurrentKey,
    status: Annotated[list[str] | None, Query(description="succeeded | errored | canceled | expired")] = None,
) -> StreamingResponse:
    batch = service.get(session, key=key, batch_id=batch_id, api="native")
    wanted = status or list(STATUS_FOR_RESULT)
    unknown = [s for s in wanted if s not in STATUS_FOR_RESULT]
    if unknown:
        raise APIError(
            422,
            "invalid_request",
            f"status: unknown {unknown[0]!r}; use {', '.join(STATUS_FOR_RESULT)}",
            field="status",
        )
    jobs = service.iter_results(
        request.app.state.session_factory, batch_id=batch.id, statuses=[STATUS_FOR_RESULT[s] for s in wanted]
    )
    return StreamingResponse(jsonl(jobs, native_line), media_type="application/x-ndjson")
