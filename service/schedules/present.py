"""ORM rows -> API shapes."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from service.batches.present import counts
from service.models import RunStatus, Schedule, ScheduleRun, Tenant
from service.schedules import repository
from service.schedules.runs import batch_outcome
from service.schedules.schemas import RunOut, ScheduleOut

LATEST_RUNS = 5


def runs_out(session: Session, runs: Sequence[ScheduleRun]) -> list[RunOut]:
    """Runs with their outcome: stored once ended, read live from the job or batch while started."""
    jobs, batches = repository.targets(session, runs)
    out = []
    for run in runs:
        batch = batches.get(run.batch_id) if run.batch_id else None
        outcome = run.outcome
        if run.status == RunStatus.STARTED:
            live = jobs.get(run.job_id) if run.job_id else (batch_outcome(batch) if batch is not None else None)
            outcome = live or "deleted"
        out.append(
            RunOut(
                id=run.id,
                schedule_id=run.schedule_id,
                due_at=run.due_at,
                trigger=run.trigger,
                status=run.status,
                outcome=outcome,
                job_id=run.job_id,
                batch_id=run.batch_id,
                request_counts=counts(batch) if batch is not None else None,
                error=run.error,
                created_at=run.created_at,
                ended_at=run.ended_at,
            )
        )
    return out


TENANT_DISABLED = "tenant_disabled: the tenant is disabled; no schedule fires until the operator enables it"


def schedule_out(schedule: Schedule, runs: list[RunOut], *, tenant_disabled: bool = False) -> ScheduleOut:
    reason = schedule.paused_reason
    if tenant_disabled and schedule.enabled:
        reason = TENANT_DISABLED
    return ScheduleOut(
        id=schedule.id,
        name=schedule.name,
        cron=schedule.cron,
        timezone=schedule.timezone,
        template=schedule.template,
        overlap=schedule.overlap,
        catchup=schedule.catchup,
        catchup_window=schedule.catchup_window,
        enabled=schedule.enabled,
        start_at=schedule.start_at,
        end_at=schedule.end_at,
        next_run_at=schedule.next_run_at,
        buffered_run_at=schedule.buffered_due_at,
        last_run_at=schedule.last_run_at,
        paused_reason=reason,
        paused_at=schedule.paused_at,
        created_at=schedule.created_at,
        updated_at=schedule.updated_at,
        latest_runs=runs,
    )


def schedules_out(session: Session, schedules: Sequence[Schedule]) -> list[ScheduleOut]:
    latest = repository.latest_runs(session, schedule_ids=[s.id for s in schedules], per=LATEST_RUNS)
    every = [run for runs in latest.values() for run in runs]
    shown = {r.id: r for r in runs_out(session, every)}
    disabled = {s.tenant_id: _disabled(session, s.tenant_id) for s in schedules}
    return [
        schedule_out(s, [shown[r.id] for r in latest[s.id]], tenant_disabled=disabled[s.tenant_id]) for s in schedules
    ]


def _disabled(session: Session, tenant_id: str) -> bool:
    tenant = session.get(Tenant, tenant_id)  # loaded with the request's key: no query
    return tenant is not None and tenant.disabled_at is not None
