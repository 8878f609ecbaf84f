"""Runs: starting them (a due time, a buffered one, a manual trigger), recording those that could not start,
and ending them once their job or batch has finished.

Exactly one run per due time: the scheduler holds the schedule's row lock while it fires, and the unique
(schedule_id, due_at) on runs refuses a second row whatever happens. Each run is made in a savepoint, so one
schedule's failure never undoes another's run.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.api.errors import APIError
from service.config import Settings
from service.db import new_id
from service.models import ApiKey, Batch, BatchStatus, Job, Overlap, RunStatus, Schedule, ScheduleRun
from service.schedules import pausing, repository, timing
from service.schedules.templates import create_run_target
from service.webhooks import outbox

log = logging.getLogger("mmjobs.schedules")
FIRE_LIMIT = 100  # due times one schedule handles per pass (catch-up `all` continues on the next pass)


def batch_outcome(batch: Batch) -> str:
    if batch.status != BatchStatus.ENDED:
        return batch.status
    if batch.cancel_initiated_at is not None:
        return "canceled"
    if batch.succeeded == batch.request_total:
        return "succeeded"
    return "partial" if batch.succeeded else "failed"


def run_event(run: ScheduleRun, schedule_name: str) -> dict[str, Any]:
    return {
        "id": run.id,
        "object": "schedule_run",
        "schedule_id": run.schedule_id,
        "schedule_name": schedule_name,
        "due_at": run.due_at,
        "trigger": run.trigger,
        "status": run.status,
        "outcome": run.outcome,
        "job_id": run.job_id,
        "batch_id": run.batch_id,
        "error": run.error,
        "created_at": run.created_at,
        "ended_at": run.ended_at,
    }


def _owner(session: Session, schedule: Schedule) -> ApiKey:
    """The key runs are made as: the one that created the schedule, or (deleted) none, with the tenant's id."""
    key = session.get(ApiKey, schedule.api_key_id) if schedule.api_key_id else None
    return key if key is not None else ApiKey(id=None, tenant_id=schedule.tenant_id)


def start(
    session: Session, schedule: Schedule, *, due_at: datetime, trigger: str, now: datetime, settings: Settings
) -> ScheduleRun | None:
    """Create the run and its job or batch, and the schedule.run.started event. None when the due time already
    has a run. An APIError (the template cannot be submitted now) leaves nothing behind."""
    savepoint = session.begin_nested()
    run = ScheduleRun(
        id=new_id("srun"),
        schedule_id=schedule.id,
        tenant_id=schedule.tenant_id,
        due_at=due_at,
        trigger=trigger,
        status=RunStatus.STARTED,
        created_at=now,
    )
    try:
        repository.add(session, run)
    except IntegrityError:
        savepoint.rollback()
        return None
    try:
        run.job_id, run.batch_id = create_run_target(
            session,
            template=schedule.template,
            schedule_id=schedule.id,
            key=_owner(session, schedule),
            settings=settings,
        )
        schedule.last_run_at = now
        session.flush()
        outbox.emit(
            session, tenant_id=schedule.tenant_id, type="schedule.run.started", data=run_event(run, schedule.name)
        )
    except BaseException:
        savepoint.rollback()
        raise
    savepoint.commit()
    return run


def record(
    session: Session, schedule: Schedule, *, due_at: datetime, trigger: str, status: str, error: str, now: datetime
) -> ScheduleRun | None:
    """Keep a due time that did not start (skipped, or failed with `error`); a failure is also an ended event."""
    savepoint = session.begin_nested()
    run = ScheduleRun(
        id=new_id("srun"),
        schedule_id=schedule.id,
        tenant_id=schedule.tenant_id,
        due_at=due_at,
        trigger=trigger,
        status=status,
        error=error,
        created_at=now,
        ended_at=now,
    )
    try:
        repository.add(session, run)
    except IntegrityError:
        savepoint.rollback()
        return None
    if status == RunStatus.FAILED:
        outbox.emit(
            session, tenant_id=schedule.tenant_id, type="schedule.run.ended", data=run_event(run, schedule.name)
        )
    savepoint.commit()
    return run


def _attempt(
    session: Session, schedule: Schedule, *, due_at: datetime, trigger: str, now: datetime, settings: Settings
) -> str:
    """Start one run; a template that cannot be submitted becomes a failed run. Returns what happened."""
    try:
        run = start(session, schedule, due_at=due_at, trigger=trigger, now=now, settings=settings)
    except APIError as exc:
        record(session, schedule, due_at=due_at, trigger=trigger, status=RunStatus.FAILED, error=exc.message, now=now)
        return "failed"
    except Exception as exc:
        # One schedule's bug or unreadable file must not stop the others; the run says so, the log says why.
        log.exception("schedule %s: run for %s failed", schedule.id, due_at.isoformat())
        error = f"internal error ({type(exc).__name__}); the service logs have the details"
        record(session, schedule, due_at=due_at, trigger=trigger, status=RunStatus.FAILED, error=error, now=now)
        return "failed"
    return "started" if run is not None else "duplicate"


def fire(session: Session, schedule: Schedule, *, now: datetime, settings: Settings) -> Counter[str]:
    """Handle one locked schedule: its buffered run once the previous run has ended, then each due time the
    plan gives, under the overlap policy; then move next_run_at on."""
    counts: Counter[str] = Counter()
    revoked = pausing.owner_revoked(session, schedule)
    if revoked is not None:  # never a run as a revoked key (issue 14.4)
        assert revoked.revoked_at is not None
        pausing.pause(session, schedule, reason=pausing.revoked_reason(revoked, revoked.revoked_at), now=now)
        counts["paused"] += 1
        return counts
    try:
        cron = timing.parse(schedule.cron, schedule.timezone)
    except timing.TimingError as exc:  # only if the timezone database lost a zone since the schedule was made
        error = f"cannot compute due times any more: {exc}"
        record(session, schedule, due_at=now, trigger="schedule", status=RunStatus.FAILED, error=error, now=now)
        schedule.next_run_at = schedule.buffered_due_at = None
        counts["failed"] += 1
        return counts
    going = repository.has_active_run(session, schedule_id=schedule.id)
    if schedule.buffered_due_at is not None and not going:
        due_at, schedule.buffered_due_at = schedule.buffered_due_at, None
        outcome = _attempt(session, schedule, due_at=due_at, trigger="buffered", now=now, settings=settings)
        counts[outcome] += 1
        going = outcome == "started"
    if schedule.next_run_at is None or schedule.next_run_at > now:
        session.flush()
        return counts
    plan = timing.plan(
        cron,
        next_run_at=schedule.next_run_at,
        now=now,
        catchup=schedule.catchup,
        window=timedelta(seconds=schedule.catchup_window),
        end_at=schedule.end_at,
        limit=FIRE_LIMIT,
    )
    for due_at, late in plan.due:
        trigger = "catchup" if late else "schedule"
        if going and schedule.overlap != Overlap.ALLOW:
            if schedule.overlap == Overlap.BUFFER_ONE and schedule.buffered_due_at is None:
                schedule.buffered_due_at = due_at
                counts["buffered"] += 1
                continue
            error = f"the previous run was still going (overlap: {schedule.overlap})"
            record(session, schedule, due_at=due_at, trigger=trigger, status=RunStatus.SKIPPED, error=error, now=now)
            counts["skipped"] += 1
            continue
        outcome = _attempt(session, schedule, due_at=due_at, trigger=trigger, now=now, settings=settings)
        counts[outcome] += 1
        going = going or outcome == "started"
    schedule.next_run_at = plan.next_run_at
    session.flush()
    return counts


def end_finished(session: Session, *, now: datetime, limit: int = 500) -> int:
    """Mark started runs whose job or batch has finished as ended, with its outcome, and write their
    schedule.run.ended events. Locked rows are skipped (another scheduler is ending them)."""
    rows = repository.finished_runs(session, limit=limit)
    for run, schedule_name, job, batch in rows:
        run.outcome = _outcome(job, batch)
        run.status = RunStatus.ENDED
        run.ended_at = now
        session.flush()
        outbox.emit(session, tenant_id=run.tenant_id, type="schedule.run.ended", data=run_event(run, schedule_name))
    return len(rows)


def _outcome(job: Job | None, batch: Batch | None) -> str:
    if job is not None:
        return job.status
    if batch is not None:
        return batch_outcome(batch)
    return "deleted"
