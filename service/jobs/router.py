from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from service import dispatch, status
from service.api.deps import CurrentKey, SessionDep, SettingsDep
from service.api.errors import APIError
from service.api.json_body import JSONRoute
from service.api.openapi import id_links
from service.config import Settings
from service.jobs import present, service
from service.jobs.schemas import Estimate, JobCreate, JobDetail, JobList, Waiting
from service.models import WAITING, ApiKey
from service.observability import tracing
from service.validation import Moment

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], route_class=JSONRoute)


@router.post(
    "",
    status_code=202,
    response_model=JobDetail | Estimate,
    summary="Submit a job",
    description="Answers 202 with the job. With `dry_run=true`, answers 200 with the token estimate and the cost "
    "range and stores nothing. 402 when the job's maximum cost does not fit the tenant's budget.",
    responses={
        200: {"model": Estimate},
        202: id_links(GetJob="GET /v1/jobs/{job_id}", CancelJob="POST /v1/jobs/{job_id}/cancel"),
        402: {"description": "Over budget"},
    },
)
async def create_job(
    body: JobCreate,
    request: Request,
    response: Response,
    session: SessionDep,
    key: CurrentKey,
    settings: SettingsDep,
    dry_run: bool = False,
) -> JobDetail | Estimate:
    # async, with the work on the thread pool: FastAPI then validates the answer on the event loop instead of
    # taking a second trip through the pool (issue 17.1: each trip costs CPU on every submission).
    if dry_run:
        response.status_code = 200
        return await run_in_threadpool(service.estimate, body=body, settings=settings)
    return await run_in_threadpool(_create_job, body, request, session, key, settings)


def _create_job(body: JobCreate, request: Request, session: Session, key: ApiKey, settings: Settings) -> JobDetail:
    incoming = tracing.valid_traceparent(request.headers.get("traceparent"))
    with tracing.span("job.intake", parent=incoming, attributes={"mmjobs.tenant": key.tenant_id}) as span:
        job = service.create(session, key=key, body=body, settings=settings, traceparent=span.traceparent() or incoming)
        span.set("mmjobs.job_id", job.id)
    return present.detail(request, job, [])


@router.get("/{job_id}", response_model=JobDetail, summary="Get a job, its attempts and its result")
def get_job(job_id: str, request: Request, session: SessionDep, key: CurrentKey) -> JobDetail:
    job, attempts = service.get(session, key=key, job_id=job_id)
    waits = status.read(request.app.state.redis).get("waits", {}) if job.status in WAITING else {}
    out = present.detail(request, job, attempts, waits)
    if out.waiting is not None and key.tenant.disabled_at is not None:  # nothing of it is dispatched (issue 14.4)
        out.waiting = Waiting(reason="tenant_disabled")
    return out


@router.get(
    "",
    response_model=JobList,
    summary="List jobs, newest first",
    description="Filter by `status` (repeatable), `created_after` / `created_before` (RFC 3339) and "
    "metadata with `metadata[KEY]=VALUE` (repeatable). Page with `cursor` = the previous `next_cursor`. "
    "Batch requests are listed only with `batch_id`.",
)
def list_jobs(
    request: Request,
    session: SessionDep,
    key: CurrentKey,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    cursor: str | None = None,
    status: Annotated[list[str] | None, Query()] = None,
    created_after: Moment | None = None,
    created_before: Moment | None = None,
    batch_id: Annotated[str | None, Query(description="List a batch's requests instead of single jobs.")] = None,
) -> JobList:
    metadata: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name.startswith("metadata["):
            if not name.endswith("]") or len(name) <= len("metadata[]"):
                raise APIError(422, "invalid_request", f"{name}: write metadata[KEY]=VALUE", field=name)
            metadata[name[len("metadata[") : -1]] = value
    for field, moment in (("created_after", created_after), ("created_before", created_before)):
        if moment is not None and moment.tzinfo is None:
            raise APIError(422, "invalid_request", f"{field}: give a timezone, e.g. 2026-01-01T00:00:00Z", field=field)
    jobs, has_more = service.list_page(
        session,
        key=key,
        limit=min(limit, settings.page_size_max),
        cursor=cursor,
        statuses=status or [],
        created_after=created_after,
        created_before=created_before,
        metadata=metadata,
        batch_id=batch_id,
    )
    return JobList(
        data=[present.summary(request, j) for j in jobs],
        has_more=has_more,
        next_cursor=jobs[-1].id if has_more and jobs else None,
    )


@router.post("/{job_id}/cancel", response_model=JobDetail, summary="Cancel a job that has not finished")
def cancel_job(job_id: str, request: Request, session: SessionDep, key: CurrentKey, settings: SettingsDep) -> JobDetail:
    job, attempts = service.cancel(session, key=key, job_id=job_id)
    dispatch.stop_calls_after_commit(session, settings, job_ids=[job_id])  # a running call stops at once
    return present.detail(request, job, attempts)
