"""The job use cases behind the HTTP routes. Functions flush; the request dependency commits."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import insert, inspect
from sqlalchemy.orm import Session

from service import dispatch, netguard
from service.api.errors import APIError, not_found
from service.config import Settings
from service.db import new_id, utcnow
from service.jobs import repository
from service.jobs.schemas import CostRange, Estimate, JobCreate
from service.jobs.validation import CheckedRequest, check_request
from service.limits import quotas
from service.models import ApiKey, Job, JobAttempt, JobStatus
from service.pricing import is_priority
from service.usage import admission

_JOB_COLUMNS = tuple(a.key for a in inspect(Job).column_attrs)


def _cost(checked: CheckedRequest, body: JobCreate, settings: Settings) -> admission.Estimate:
    """Least and most the job's one call can cost, at the current prices."""
    return admission.estimate(
        settings.price_table(),
        model=checked.model,
        input_tokens=checked.estimated_input_tokens,
        max_tokens=checked.max_tokens,
        priority=is_priority(body.params),
    )


def estimate(*, body: JobCreate, settings: Settings) -> Estimate:
    """What the job would cost, without storing anything (`dry_run`)."""
    e = _cost(check_request(model=body.model, fmt=body.format, params=body.params), body, settings)
    return Estimate(
        model=e.model,
        estimated_input_tokens=e.estimated_input_tokens,
        max_output_tokens=e.max_output_tokens,
        cost_usd=CostRange(min=e.cost_min, max=e.cost_max),
        price_version=e.price_version,
    )


def create(
    session: Session, *, key: ApiKey, body: JobCreate, settings: Settings, traceparent: str | None = None
) -> Job:
    checked = check_request(model=body.model, fmt=body.format, params=body.params)
    tenant = quotas.tenant_of(session, key)
    quotas.refuse_if_disabled(tenant)  # 403 before any other refusal (a budget's 402)
    if body.webhook_url:
        netguard.check_url(body.webhook_url, field="webhook_url", allow_loopback=settings.webhook_allow_loopback)
    now = utcnow()
    job = Job(
        id=new_id("job"),
        tenant_id=key.tenant_id,
        api_key_id=key.id,
        model=checked.model.name,
        format=body.format,
        status=JobStatus.QUEUED,
        priority=body.priority,
        meta=body.metadata,
        params=body.params,
        estimated_input_tokens=checked.estimated_input_tokens,
        max_tokens=checked.max_tokens,
        webhook_url=body.webhook_url,
        traceparent=traceparent,  # the intake span: dispatch and the worker continue its trace
        max_attempts=body.max_attempts or settings.default_max_attempts,
        attempt_count=0,
        output_tokens_so_far=0,
        input_tokens=0,
        output_tokens=0,
        cache_read_tokens=0,
        cache_write_tokens=0,
        next_attempt_at=now,
        created_at=now,
        updated_at=now,
        expires_at=now + timedelta(seconds=settings.job_expiry_seconds),
        # Every other column too: the row is written from these values, and the job answered from them.
        batch_id=None,
        custom_id=None,
        counted_input_tokens=None,
        dispatched_at=None,
        lease_owner=None,
        lease_expires_at=None,
        started_at=None,
        finished_at=None,
        error=None,
        result=None,
        cost_usd=Decimal(0),
        budget_reserved=False,
    )
    # One INSERT, not a unit-of-work flush (issue 17.1): the job is not added to the session, nothing is read back.
    session.execute(insert(Job), [{column: getattr(job, column) for column in _JOB_COLUMNS}])
    if not tenant.no_budgets:  # the API key cache knew the tenant has no budget: no budget query (issue 17.1)
        most = _cost(checked, body, settings).cost_max
        refusal = admission.admit(
            session, job_id=job.id, tenant_id=key.tenant_id, api_key_id=key.id, amount=most, now=now
        )
        if refusal is not None:
            raise APIError(402, "budget_exceeded", refusal.message())
    quotas.admit_jobs(session, key=key, settings=settings, adds=1)  # the tenant's maxima (issue 14), locked last
    dispatch.wake_scheduler_after_commit(session, settings)
    return job


def get(session: Session, *, key: ApiKey, job_id: str) -> tuple[Job, list[JobAttempt]]:
    job = repository.get(session, tenant_id=key.tenant_id, job_id=job_id, with_result=True)
    if job is None:
        raise not_found("job", job_id)
    return job, repository.attempts(session, job_id=job.id)


def list_page(
    session: Session,
    *,
    key: ApiKey,
    limit: int,
    cursor: str | None,
    statuses: Sequence[str],
    created_after: datetime | None,
    created_before: datetime | None,
    metadata: dict[str, str],
    batch_id: str | None = None,
) -> tuple[list[Job], bool]:
    unknown = [s for s in statuses if s not in JobStatus.__members__.values()]
    if unknown:
        allowed = ", ".join(JobStatus)
        raise APIError(422, "invalid_request", f"status: unknown {unknown[0]!r}; use {allowed}", field="status")
    rows = repository.list_page(
        session,
        tenant_id=key.tenant_id,
        limit=limit,
        cursor=cursor,
        statuses=statuses,
        created_after=created_after,
        created_before=created_before,
        metadata=metadata,
        batch_id=batch_id,
    )
    return rows[:limit], len(rows) > limit


def cancel(session: Session, *, key: ApiKey, job_id: str) -> tuple[Job, list[JobAttempt]]:
    if not repository.cancel(session, tenant_id=key.tenant_id, job_id=job_id):
        job = repository.get(session, tenant_id=key.tenant_id, job_id=job_id)
        if job is None:
            raise not_found("job", job_id)
        raise APIError(409, "job_not_cancelable", f"job {job_id!r} has already finished ({job.status})")
    session.expire_all()
    return get(session, key=key, job_id=job_id)
