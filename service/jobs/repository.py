"""Job queries made by the intake: store, read, list, cancel."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, undefer

from service.db import utcnow
from service.jobs.landing import LANDED, on_terminal
from service.models import ACTIVE, TERMINAL, WAITING, Batch, BatchStatus, Job, JobAttempt, JobStatus


def add(session: Session, job: Job) -> None:
    session.add(job)
    session.flush()


def get(session: Session, *, tenant_id: str, job_id: str, with_result: bool = False) -> Job | None:
    query = select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id)
    if with_result:
        query = query.options(undefer(Job.result))
    return session.scalars(query).one_or_none()


def attempts(session: Session, *, job_id: str) -> list[JobAttempt]:
    return list(session.scalars(select(JobAttempt).where(JobAttempt.job_id == job_id).order_by(JobAttempt.number)))


def list_page(
    session: Session,
    *,
    tenant_id: str,
    limit: int,
    cursor: str | None = None,
    statuses: Sequence[str] = (),
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    metadata: dict[str, str] | None = None,
    batch_id: str | None = None,
) -> list[Job]:
    """Newest first; `limit + 1` rows so the caller can tell whether a next page exists. Without `batch_id`,
    single jobs only: a 100,000-request batch must not bury them."""
    query = select(Job).where(
        Job.tenant_id == tenant_id, Job.batch_id == batch_id if batch_id else Job.batch_id.is_(None)
    )
    if cursor is not None:
        query = query.where(Job.id < cursor)
    if statuses:
        query = query.where(Job.status.in_(statuses))
    if created_after is not None:
        query = query.where(Job.created_at >= created_after)
    if created_before is not None:
        query = query.where(Job.created_at < created_before)
    for key, value in (metadata or {}).items():
        query = query.where(Job.meta[key].as_string() == value)
    return list(session.scalars(query.order_by(Job.id.desc()).limit(limit + 1)))


def cancel(session: Session, *, tenant_id: str, job_id: str) -> bool:
    """Cancel a job that has not finished. A running call's answer will be discarded by its worker."""
    now = utcnow()
    landed = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.tenant_id == tenant_id, Job.status.in_(ACTIVE))
        .values(status=JobStatus.CANCELED, finished_at=now, updated_at=now, lease_expires_at=None)
        .returning(*LANDED)
    ).all()
    on_terminal(session, landed, now=now)
    return bool(landed)


@dataclass(frozen=True, kw_only=True, slots=True)
class EndedJob:
    tenant_id: str
    model: str
    attempt_count: int


def ended_attempt(session: Session, *, job_id: str) -> EndedJob | None:
    """The job if its next attempt will never run, else None: it reached a final state, or it still waits but
    past its deadline (the scheduler is about to expire it) or in a canceling batch (about to be canceled)."""
    canceling = select(Batch.id).where(Batch.id == Job.batch_id, Batch.status == BatchStatus.CANCELING).exists()
    never = Job.status.in_(TERMINAL) | (
        Job.status.in_(WAITING) & ((Job.expires_at <= func.statement_timestamp()) | canceling)
    )
    row = session.execute(
        select(Job.tenant_id, Job.model, Job.attempt_count).where(Job.id == job_id, never)
    ).one_or_none()
    if row is None:
        return None
    return EndedJob(tenant_id=row.tenant_id, model=row.model, attempt_count=row.attempt_count)
