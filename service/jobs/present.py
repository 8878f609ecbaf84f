"""ORM rows -> the JSON the API returns."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import Request

from service import accounts
from service.api.links import link
from service.db import utcnow
from service.jobs.schemas import (
    Attempt,
    JobDetail,
    JobError,
    JobSummary,
    Links,
    Progress,
    Result,
    Usage,
    UsageCost,
    Waiting,
)
from service.models import WAITING, Job, JobAttempt
from service.status import group_key


def _usage_cost(job: Job) -> UsageCost:
    return UsageCost(**_usage(job).model_dump(), cost_usd=job.cost_usd)


def _usage(row: Job | JobAttempt) -> Usage:
    return Usage(
        input_tokens=row.input_tokens,
        output_tokens=row.output_tokens,
        cache_read_tokens=row.cache_read_tokens,
        cache_write_tokens=row.cache_write_tokens,
    )


def _links(request: Request, job_id: str) -> Links:
    return Links(
        self=link(request, "get_job", job_id=job_id),
        cancel=link(request, "cancel_job", job_id=job_id),
    )


def summary(request: Request, job: Job) -> JobSummary:
    return JobSummary(
        id=job.id,
        status=job.status,
        model=job.model,
        format=job.format,
        batch_id=job.batch_id,
        custom_id=job.custom_id,
        priority=job.priority,
        metadata=job.meta,
        created_at=job.created_at,
        updated_at=job.updated_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        expires_at=job.expires_at,
        attempt_count=job.attempt_count,
        max_attempts=job.max_attempts,
        estimated_input_tokens=job.estimated_input_tokens,
        counted_input_tokens=job.counted_input_tokens,
        usage=_usage_cost(job),
        error=JobError.model_validate(job.error) if job.error else None,
        links=_links(request, job.id),
    )


def attempt(row: JobAttempt) -> Attempt:
    duration = None
    if row.ended_at is not None:
        duration = int((row.ended_at - row.started_at).total_seconds() * 1000)
    return Attempt(
        number=row.number,
        started_at=row.started_at,
        ended_at=row.ended_at,
        duration_ms=duration,
        http_status=row.http_status,
        minimax_code=row.minimax_code,
        classification=row.classification,
        error_type=row.error_type,
        error_message=row.error_message,
        upstream_request_id=row.upstream_request_id,
        account=accounts.public_name(row.account),
        usage=_usage(row),
    )


def waiting(job: Job, waits: dict[str, Any], now: datetime) -> Waiting | None:
    if job.status not in WAITING:
        return None
    if job.next_attempt_at > now:
        return Waiting(reason="retry_backoff", until=job.next_attempt_at)
    known = waits.get(group_key(job.tenant_id, job.model))
    if known and job.dispatched_at is None:
        return Waiting.model_validate(known)
    if job.dispatched_at is not None:
        return Waiting(reason="dispatched")
    return Waiting(reason="scheduling")


def detail(request: Request, job: Job, attempts: list[JobAttempt], waits: dict[str, Any] | None = None) -> JobDetail:
    return JobDetail(
        **summary(request, job).model_dump(),
        waiting=waiting(job, waits or {}, utcnow()),
        progress=Progress(output_tokens_so_far=job.output_tokens_so_far),
        attempts=[attempt(a) for a in attempts],
        result=Result.model_validate(job.result) if job.result else None,
    )
