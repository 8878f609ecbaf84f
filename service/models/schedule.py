from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from service.db import JSONType, utcnow
from service.models.base import Base, CreatedAtMixin


class Overlap(StrEnum):
    SKIP = "skip"  # a due time is skipped while the previous run is still going
    ALLOW = "allow"  # runs may overlap
    BUFFER_ONE = "buffer_one"  # one due time waits for the previous run to end; more are skipped


class Catchup(StrEnum):
    SKIP = "skip"  # missed due times are not run
    RUN_ONCE = "run_once"  # the latest missed due time within the window runs, once
    ALL = "all"  # every missed due time within the window runs


class RunStatus(StrEnum):
    STARTED = "started"  # its job or batch exists; `ended` once that finishes
    ENDED = "ended"
    SKIPPED = "skipped"  # the overlap policy held it back
    FAILED = "failed"  # the job or batch could not be created (the error says why)


class Schedule(CreatedAtMixin, Base):
    """A template (a job, a batch, or a directory of documents) submitted on a cron timetable.

    `next_run_at` is the earliest due time not yet handled (None while paused or after `end_at`); schedulers
    lock due rows with FOR UPDATE SKIP LOCKED, and a unique (schedule_id, due_at) on runs makes a second run for
    the same due time impossible.
    """

    __tablename__ = "schedules"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    # Runs are created as this key (its budgets apply); it may be revoked later, the schedule belongs to the tenant.
    api_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    name: Mapped[str] = mapped_column(String(200))
    cron: Mapped[str] = mapped_column(String(120))
    timezone: Mapped[str] = mapped_column(String(64))
    template: Mapped[dict[str, Any]] = mapped_column(JSONType)
    overlap: Mapped[str] = mapped_column(String(16), default=Overlap.SKIP)
    catchup: Mapped[str] = mapped_column(String(16), default=Catchup.RUN_ONCE)
    catchup_window: Mapped[int] = mapped_column(default=86400)
    enabled: Mapped[bool] = mapped_column(default=True)
    start_at: Mapped[datetime | None]
    end_at: Mapped[datetime | None]
    next_run_at: Mapped[datetime | None] = mapped_column(index=True)
    # buffer_one: the due time waiting for the previous run to end.
    buffered_due_at: Mapped[datetime | None] = mapped_column(index=True)
    last_run_at: Mapped[datetime | None]
    # Why the service paused it by itself (its API key was revoked); None once resumed, or if paused by request.
    paused_reason: Mapped[str | None] = mapped_column(Text)
    paused_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (Index("ix_schedules_tenant_id_id", "tenant_id", "id"),)


class ScheduleRun(CreatedAtMixin, Base):
    """One due time of a schedule and what became of it: the job or batch it created, or why there is none.

    No foreign keys to jobs and batches: deleting a batch must not touch this table, and a run whose job or
    batch is gone simply ends with outcome `deleted`."""

    __tablename__ = "schedule_runs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    schedule_id: Mapped[str] = mapped_column(ForeignKey("schedules.id", ondelete="CASCADE"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    due_at: Mapped[datetime]
    # schedule | catchup | buffered | manual
    trigger: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    job_id: Mapped[str | None] = mapped_column(String(40))
    batch_id: Mapped[str | None] = mapped_column(String(48))
    # Once ended: the job's final status, or for a batch succeeded | partial | failed | canceled; `deleted` when
    # the job or batch was deleted first.
    outcome: Mapped[str | None] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    ended_at: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint("schedule_id", "due_at"),
        # Each scheduler pass looks for started runs whose job or batch has finished: only the few started rows.
        Index(
            "ix_schedule_runs_started",
            "id",
            postgresql_where=text("status = 'started'"),
            sqlite_where=text("status = 'started'"),
        ),
    )
