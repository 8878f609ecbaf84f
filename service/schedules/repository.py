"""Schedule and run queries."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.orm import Session

from service.batches import tally
from service.models import TERMINAL, Batch, BatchStatus, Job, RunStatus, Schedule, ScheduleRun, Tenant


def add(session: Session, row: Schedule | ScheduleRun) -> None:
    session.add(row)
    session.flush()


def get(session: Session, *, tenant_id: str, schedule_id: str, lock: bool = False) -> Schedule | None:
    query = select(Schedule).where(Schedule.id == schedule_id, Schedule.tenant_id == tenant_id)
    if lock:
        query = query.with_for_update()
    return session.scalars(query).one_or_none()


def list_page(session: Session, *, tenant_id: str, limit: int, after_id: str | None) -> tuple[list[Schedule], bool]:
    """Newest first; `after_id` gives the page after that schedule."""
    query = select(Schedule).where(Schedule.tenant_id == tenant_id)
    if after_id is not None:
        query = query.where(Schedule.id < after_id)
    rows = list(session.scalars(query.order_by(Schedule.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def delete_schedule(session: Session, *, schedule_id: str) -> None:
    session.execute(delete(ScheduleRun).where(ScheduleRun.schedule_id == schedule_id))
    session.execute(delete(Schedule).where(Schedule.id == schedule_id))


def lock_due(session: Session, *, now: datetime, limit: int) -> list[Schedule]:
    """Enabled schedules with a due time or a buffered run, locked; rows another scheduler holds are skipped, so
    each due schedule is handled by exactly one scheduler at a time."""
    # Two indexed lookups rather than one OR that would scan the table on every pass. A disabled tenant's
    # schedules do not fire (issue 14.4); they go on from the time it is enabled again.
    live = Schedule.tenant_id.not_in(select(Tenant.id).where(Tenant.disabled_at.is_not(None)))
    due = select(Schedule).where(Schedule.enabled, Schedule.next_run_at <= now, live).order_by(Schedule.next_run_at)
    rows = list(session.scalars(due.limit(limit).with_for_update(skip_locked=True)))
    buffered = select(Schedule).where(Schedule.enabled, Schedule.buffered_due_at.is_not(None), live)
    if rows:
        buffered = buffered.where(Schedule.id.not_in([s.id for s in rows]))
    rows += session.scalars(buffered.limit(limit).with_for_update(skip_locked=True))
    return rows


def has_active_run(session: Session, *, schedule_id: str) -> bool:
    """Whether a started run of the schedule has a job or batch that has not finished."""
    query = (
        select(ScheduleRun.id)
        .outerjoin(Job, Job.id == ScheduleRun.job_id)
        .outerjoin(Batch, Batch.id == ScheduleRun.batch_id)
        .where(
            ScheduleRun.schedule_id == schedule_id,
            ScheduleRun.status == RunStatus.STARTED,
            or_(
                and_(Job.id.is_not(None), Job.status.not_in(TERMINAL)),
                and_(Batch.id.is_not(None), Batch.status != BatchStatus.ENDED),
            ),
        )
        .limit(1)
    )
    return session.scalar(query) is not None


def finished_runs(session: Session, *, limit: int) -> list[tuple[ScheduleRun, str, Job | None, Batch | None]]:
    """Started runs whose job or batch has finished (or is gone), locked, with their schedule's name."""
    query = (
        select(ScheduleRun, Schedule.name, Job, Batch)
        .join(Schedule, Schedule.id == ScheduleRun.schedule_id)
        .outerjoin(Job, Job.id == ScheduleRun.job_id)
        .outerjoin(Batch, Batch.id == ScheduleRun.batch_id)
        .where(
            ScheduleRun.status == RunStatus.STARTED,
            or_(
                Job.status.in_(TERMINAL),
                Batch.status == BatchStatus.ENDED,
                and_(ScheduleRun.job_id.is_not(None), Job.id.is_(None)),
                and_(ScheduleRun.batch_id.is_not(None), Batch.id.is_(None)),
            ),
        )
        .limit(limit)
        .with_for_update(skip_locked=True, of=ScheduleRun)
    )
    return [(row[0], row[1], row[2], row[3]) for row in session.execute(query)]


def latest_runs(session: Session, *, schedule_ids: Sequence[str], per: int) -> dict[str, list[ScheduleRun]]:
    """The `per` latest runs of each schedule, newest first."""
    if not schedule_ids:
        return {}
    rank = (
        func.row_number()
        .over(partition_by=ScheduleRun.schedule_id, order_by=(ScheduleRun.due_at.desc(), ScheduleRun.id.desc()))
        .label("rank")
    )
    ranked = select(ScheduleRun.id, rank).where(ScheduleRun.schedule_id.in_(schedule_ids)).subquery()
    query = (
        select(ScheduleRun)
        .join(ranked, ranked.c.id == ScheduleRun.id)
        .where(ranked.c.rank <= per)
        .order_by(ScheduleRun.due_at.desc(), ScheduleRun.id.desc())
    )
    out: dict[str, list[ScheduleRun]] = {i: [] for i in schedule_ids}
    for run in session.scalars(query):
        out[run.schedule_id].append(run)
    return out


def runs_page(
    session: Session, *, schedule_id: str, limit: int, before: tuple[datetime, str] | None
) -> tuple[list[ScheduleRun], bool]:
    """Newest due time first; `before` = the last row of the previous page (due_at, id)."""
    query = select(ScheduleRun).where(ScheduleRun.schedule_id == schedule_id)
    if before is not None:
        due_at, run_id = before
        query = query.where(
            or_(ScheduleRun.due_at < due_at, and_(ScheduleRun.due_at == due_at, ScheduleRun.id < run_id))
        )
    rows = list(session.scalars(query.order_by(ScheduleRun.due_at.desc(), ScheduleRun.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def get_run(session: Session, *, schedule_id: str, run_id: str) -> ScheduleRun | None:
    return session.scalars(
        select(ScheduleRun).where(ScheduleRun.id == run_id, ScheduleRun.schedule_id == schedule_id)
    ).one_or_none()


def targets(session: Session, runs: Sequence[ScheduleRun]) -> tuple[dict[str, str], dict[str, Batch]]:
    """The current status of the runs' jobs, and their batches."""
    job_ids = [r.job_id for r in runs if r.job_id]
    batch_ids = [r.batch_id for r in runs if r.batch_id]
    jobs: dict[str, str] = {}
    if job_ids:
        jobs = {row.id: row.status for row in session.execute(select(Job.id, Job.status).where(Job.id.in_(job_ids)))}
    batches = {b.id: b for b in session.scalars(select(Batch).where(Batch.id.in_(batch_ids)))} if batch_ids else {}
    tally.current(session, list(batches.values()))
    return jobs, batches
