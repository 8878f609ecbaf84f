from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, Index, Numeric, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, deferred, mapped_column

from service.db import BigIntPK, JSONType, utcnow
from service.models.base import Base, CreatedAtMixin


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    EXPIRED = "expired"


WAITING = (JobStatus.QUEUED, JobStatus.RETRYING)
ACTIVE = (JobStatus.QUEUED, JobStatus.RETRYING, JobStatus.RUNNING)
TERMINAL = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.EXPIRED)


class Job(CreatedAtMixin, Base):
    """One request to MiniMax and everything we know about its execution.

    `params` and `result` can be megabytes: they are deferred so listing and scheduling never load them.
    """

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    api_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    custom_id: Mapped[str | None] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(64))
    format: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)
    priority: Mapped[int] = mapped_column(default=0)
    meta: Mapped[dict[str, str]] = mapped_column("metadata", JSONType, default=dict)
    params: Mapped[dict[str, Any]] = deferred(mapped_column(JSONType))
    estimated_input_tokens: Mapped[int] = mapped_column(default=0)
    # MiniMax's own count (count_tokens), asked before calling when the estimate is near the model's window.
    counted_input_tokens: Mapped[int | None]
    max_tokens: Mapped[int | None]

    max_attempts: Mapped[int] = mapped_column(default=5)
    attempt_count: Mapped[int] = mapped_column(default=0)
    # When the job may next run; the scheduler dispatches waiting jobs whose time has come.
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    dispatched_at: Mapped[datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None]
    output_tokens_so_far: Mapped[int] = mapped_column(default=0)

    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    expires_at: Mapped[datetime]

    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    result: Mapped[dict[str, Any] | None] = deferred(mapped_column(JSONType))
    input_tokens: Mapped[int] = mapped_column(default=0)
    output_tokens: Mapped[int] = mapped_column(default=0)
    cache_read_tokens: Mapped[int] = mapped_column(default=0)
    cache_write_tokens: Mapped[int] = mapped_column(default=0)
    cost_usd: Mapped[Decimal] = mapped_column(Numeric(18, 9), default=Decimal(0))
    # Set once the job holds its maximum cost on its tenant's budgets (at intake, or at dispatch for batches).
    budget_reserved: Mapped[bool] = mapped_column(default=False)
    webhook_url: Mapped[str | None] = mapped_column(String(2048))
    # The intake span as a W3C traceparent (55 characters): the Celery message holds only the job id, so the
    # scheduler's and the worker's spans find their trace here (service/observability/tracing.py). Never shown.
    traceparent: Mapped[str | None] = mapped_column(String(55))

    __table_args__ = (
        Index("ix_jobs_tenant_id_id", "tenant_id", "id"),
        # A batch's results, walked in id order; custom_id is unique within a batch.
        Index("ix_jobs_batch_id_id", "batch_id", "id"),
        UniqueConstraint("batch_id", "custom_id"),
        # The scheduler's scans touch only the few non-terminal rows.
        Index(
            "ix_jobs_waiting",
            "next_attempt_at",
            postgresql_where=text("status IN ('queued', 'retrying')"),
            sqlite_where=text("status IN ('queued', 'retrying')"),
        ),
        # A tenant's waiting jobs, counted against its max_queued_jobs on every create (service/limits/).
        Index(
            "ix_jobs_tenant_waiting",
            "tenant_id",
            postgresql_where=text("status IN ('queued', 'retrying')"),
            sqlite_where=text("status IN ('queued', 'retrying')"),
        ),
        Index(
            "ix_jobs_running_lease",
            "lease_expires_at",
            postgresql_where=text("status = 'running'"),
            sqlite_where=text("status = 'running'"),
        ),
    )


class JobAttempt(Base):
    """One call against MiniMax. A crashed worker's attempt ends with classification `lease_expired`."""

    __tablename__ = "job_attempts"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    number: Mapped[int]
    worker: Mapped[str | None] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None]
    http_status: Mapped[int | None]
    minimax_code: Mapped[int | None]
    # succeeded | retryable | permanent | rate_limited | lease_expired | interrupted | canceled | internal
    classification: Mapped[str | None] = mapped_column(String(32))
    error_type: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    upstream_request_id: Mapped[str | None] = mapped_column(String(128))
    # The upstream account the call went to (service/accounts/): a shared account's name, "tenant.<id>" for the
    # tenant's own key, None for the single configured key (MINIMAX_API_KEY); set when the attempt ends.
    account: Mapped[str | None] = mapped_column(String(120))
    input_tokens: Mapped[int] = mapped_column(default=0)
    output_tokens: Mapped[int] = mapped_column(default=0)
    cache_read_tokens: Mapped[int] = mapped_column(default=0)
    cache_write_tokens: Mapped[int] = mapped_column(default=0)

    __table_args__ = (UniqueConstraint("job_id", "number"),)
