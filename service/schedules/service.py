"""Schedule use cases behind the HTTP routes. Functions flush; the request dependency commits."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from service.api.errors import APIError, not_found
from service.config import Settings
from service.db import new_id, utcnow
from service.limits import quotas
from service.models import ApiKey, Schedule, ScheduleRun
from service.schedules import repository, runs, templates, timing
from service.schedules.schemas import ScheduleCreate, ScheduleUpdate, Template

_NOT_NULL = ("name", "cron", "timezone", "template", "overlap", "catchup", "catchup_window", "enabled")


def _cron(expr: str, timezone: str) -> timing.Cron:
    try:
        timing.zone(timezone)
    except timing.TimingError as exc:
        raise APIError(422, "invalid_request", f"timezone: {exc}", field="timezone") from None
    try:
        return timing.parse(expr, timezone)
    except timing.TimingError as exc:
        raise APIError(422, "invalid_request", f"cron: {exc}", field="cron") from None


def _check_times(start_at: datetime | None, end_at: datetime | None) -> None:
    for field, moment in (("start_at", start_at), ("end_at", end_at)):
        if moment is not None and moment.tzinfo is None:
            raise APIError(422, "invalid_request", f"{field}: give a timezone, e.g. 2026-01-01T00:00:00Z", field=field)
    if start_at is not None and end_at is not None and end_at <= start_at:
        raise APIError(422, "invalid_request", "end_at: must be after start_at", field="end_at")


def _reschedule(schedule: Schedule, cron: timing.Cron, now: datetime) -> None:
    """Next due time from now (a paused schedule has none; resuming does not catch up on the pause)."""
    if not schedule.enabled:
        schedule.next_run_at = schedule.buffered_due_at = None
        return
    due = timing.initial(cron, now=now, start_at=schedule.start_at, end_at=None)
    if due is None:
        raise APIError(422, "invalid_request", "cron: the expression never fires again", field="cron")
    if schedule.end_at is not None and due > schedule.end_at:
        raise APIError(
            422, "invalid_request", f"end_at: no due time is left before it (the next is {due.isoformat()})",
            field="end_at",
        )  # fmt: skip
    schedule.next_run_at = due


def _template(session: Session, template: Template, *, key: ApiKey, settings: Settings) -> dict[str, object]:
    templates.validate(session, template=template, key=key, settings=settings)
    return template.model_dump(mode="json", exclude_unset=True)


def create(
    session: Session, *, key: ApiKey, body: ScheduleCreate, settings: Settings, now: datetime | None = None
) -> Schedule:
    cron = _cron(body.cron, body.timezone)
    _check_times(body.start_at, body.end_at)
    now = now or utcnow()
    schedule = Schedule(
        id=new_id("sch"),
        tenant_id=key.tenant_id,
        api_key_id=key.id,
        name=body.name,
        cron=cron.expr,
        timezone=body.timezone,
        template=_template(session, body.template, key=key, settings=settings),
        overlap=body.overlap,
        catchup=body.catchup,
        catchup_window=body.catchup_window,
        enabled=body.enabled,
        start_at=body.start_at,
        end_at=body.end_at,
        created_at=now,
        updated_at=now,
    )
    _reschedule(schedule, cron, now)
    repository.add(session, schedule)
    quotas.admit_schedule(session, key=key, settings=settings)
    return schedule


def get(session: Session, *, key: ApiKey, schedule_id: str, lock: bool = False) -> Schedule:
    schedule = repository.get(session, tenant_id=key.tenant_id, schedule_id=schedule_id, lock=lock)
    if schedule is None:
        raise not_found("schedule", schedule_id)
    return schedule


def list_page(session: Session, *, key: ApiKey, limit: int, cursor: str | None) -> tuple[list[Schedule], bool]:
    return repository.list_page(session, tenant_id=key.tenant_id, limit=limit, after_id=cursor)


def update(session: Session, *, key: ApiKey, schedule_id: str, body: ScheduleUpdate, settings: Settings) -> Schedule:
    given = body.model_fields_set
    for field in _NOT_NULL:
        if field in given and getattr(body, field) is None:
            raise APIError(422, "invalid_request", f"{field}: cannot be null", field=field)
    schedule = get(session, key=key, schedule_id=schedule_id, lock=True)
    before = _timing_of(schedule)
    cron = _cron(body.cron or schedule.cron, body.timezone or schedule.timezone)
    start_at = body.start_at if "start_at" in given else schedule.start_at
    end_at = body.end_at if "end_at" in given else schedule.end_at
    _check_times(start_at, end_at)
    if body.template is not None:
        schedule.template = _template(session, body.template, key=key, settings=settings)
    now = utcnow()
    if "enabled" in given and body.enabled != schedule.enabled:
        _pause_or_resume(session, schedule, key=key, enabled=bool(body.enabled), now=now)
    for field in ("name", "overlap", "catchup", "catchup_window", "enabled"):
        if field in given:
            setattr(schedule, field, getattr(body, field))
    schedule.cron, schedule.timezone, schedule.start_at, schedule.end_at = cron.expr, cron.zone.key, start_at, end_at
    schedule.updated_at = now
    if _timing_of(schedule) != before:
        _reschedule(schedule, cron, now)
    session.flush()
    return schedule


def _pause_or_resume(session: Session, schedule: Schedule, *, key: ApiKey, enabled: bool, now: datetime) -> None:
    """A pause by request keeps no reason; a resume clears the reason of a pause the service made. Runs are made
    as the schedule's key: if that key was revoked (or deleted), the key that resumes it takes it over, so a
    resumed schedule never runs as a revoked key (issue 14.4)."""
    schedule.paused_reason = None
    schedule.paused_at = None if enabled else now
    if enabled:
        owner = session.get(ApiKey, schedule.api_key_id) if schedule.api_key_id else None
        if owner is None or owner.revoked_at is not None:
            schedule.api_key_id = key.id


def _timing_of(schedule: Schedule) -> tuple[object, ...]:
    """What the due times depend on: a change computes the next one again, from now."""
    return (schedule.cron, schedule.timezone, schedule.start_at, schedule.end_at, schedule.enabled)


def set_enabled(session: Session, *, key: ApiKey, schedule_id: str, enabled: bool, settings: Settings) -> Schedule:
    """Pause (no due times until resumed) or resume (the next due time from now; the pause is not caught up)."""
    schedule = get(session, key=key, schedule_id=schedule_id, lock=True)
    if schedule.enabled == enabled:
        return schedule
    return update(session, key=key, schedule_id=schedule_id, body=ScheduleUpdate(enabled=enabled), settings=settings)


def delete(session: Session, *, key: ApiKey, schedule_id: str) -> None:
    """The schedule and its run records go; the jobs and batches its runs made stay."""
    schedule = get(session, key=key, schedule_id=schedule_id, lock=True)
    repository.delete_schedule(session, schedule_id=schedule.id)


def trigger(session: Session, *, key: ApiKey, schedule_id: str, settings: Settings) -> ScheduleRun:
    """Run now, paused or not, whatever the overlap policy: an explicit request. The template's errors (402 over
    budget, a directory gone) answer the request; nothing is stored then."""
    schedule = get(session, key=key, schedule_id=schedule_id, lock=True)
    now = utcnow()
    # Cron due times are whole minutes; a manual run's microseconds keep it off them (unique schedule, due_at).
    due_at = now if now.microsecond else now + timedelta(microseconds=1)
    run = runs.start(session, schedule, due_at=due_at, trigger="manual", now=now, settings=settings)
    if run is None:
        raise APIError(409, "conflict", "a run was triggered at this very instant; try again")
    return run


def list_runs(
    session: Session, *, key: ApiKey, schedule_id: str, limit: int, cursor: str | None
) -> tuple[list[ScheduleRun], bool]:
    schedule = get(session, key=key, schedule_id=schedule_id)
    before = None
    if cursor is not None:
        last = repository.get_run(session, schedule_id=schedule.id, run_id=cursor)
        if last is None:
            raise APIError(422, "invalid_request", f"cursor: unknown run {cursor!r}", field="cursor")
        before = (last.due_at, last.id)
    return repository.runs_page(session, schedule_id=schedule.id, limit=limit, before=before)
