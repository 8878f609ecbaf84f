"""Schedules the service pauses by itself: those made with an API key that was revoked (issue 14.4), so a revoked
key never goes on creating billed runs; and due times skipped while the tenant was disabled.

LOCK ORDER here: the api_keys row (revoked first, by the caller's UPDATE) -> the key's schedules (ascending id).
A scheduler pass locks a schedule and only reads the key, so the two can form no cycle: a run the scheduler fires
while a revocation waits for that schedule's lock was made before the revocation committed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.models import ApiKey, Schedule
from service.schedules import timing
from service.webhooks import outbox

EVENT = "schedule.paused"


def revoked_reason(key: ApiKey, at: datetime) -> str:
    return (
        f"api_key_revoked: the API key it was created with ({key.id}, {key.prefix}...) was revoked at "
        f"{at.isoformat()}; resume it with another key, which then owns its runs"
    )


def paused_event(schedule: Schedule) -> dict[str, Any]:
    return {
        "id": schedule.id,
        "object": "schedule",
        "name": schedule.name,
        "enabled": schedule.enabled,
        "paused_reason": schedule.paused_reason,
        "paused_at": schedule.paused_at,
        "api_key_id": schedule.api_key_id,
    }


def pause(session: Session, schedule: Schedule, *, reason: str, now: datetime) -> None:
    """Pause a locked schedule, keep why, and tell the tenant's webhooks (`schedule.paused`)."""
    schedule.enabled = False
    schedule.next_run_at = schedule.buffered_due_at = None
    schedule.paused_reason = reason
    schedule.paused_at = now
    schedule.updated_at = now
    session.flush()
    outbox.emit(session, tenant_id=schedule.tenant_id, type=EVENT, data=paused_event(schedule))


def pause_for_revoked_key(session: Session, *, key: ApiKey, now: datetime) -> list[Schedule]:
    """Pause every enabled schedule made with `key` (just revoked, in the caller's transaction)."""
    query = (
        select(Schedule).where(Schedule.api_key_id == key.id, Schedule.enabled).order_by(Schedule.id).with_for_update()
    )
    paused = list(session.scalars(query))
    for schedule in paused:
        pause(session, schedule, reason=revoked_reason(key, now), now=now)
    return paused


def owner_revoked(session: Session, schedule: Schedule) -> ApiKey | None:
    """The schedule's key if it has been revoked (a schedule locked by the scheduler that missed the pause, e.g.
    revoked before this rule existed)."""
    key = session.get(ApiKey, schedule.api_key_id) if schedule.api_key_id else None
    return key if key is not None and key.revoked_at is not None else None


def restart_after_enable(session: Session, *, tenant_id: str, now: datetime) -> int:
    """A re-enabled tenant's schedules go on from now: the due times missed while it was disabled are not caught
    up (as for a schedule resumed after a pause). Returns how many schedules were moved on."""
    query = select(Schedule).where(Schedule.tenant_id == tenant_id, Schedule.enabled).order_by(Schedule.id)
    moved = 0
    for schedule in session.scalars(query.with_for_update()):
        if schedule.buffered_due_at is not None:
            # A run buffered behind an overlap before the tenant was disabled is a missed due time too.
            schedule.buffered_due_at = None
            schedule.updated_at = now
        if schedule.next_run_at is None or schedule.next_run_at > now:
            continue
        try:
            cron = timing.parse(schedule.cron, schedule.timezone)
        except timing.TimingError:
            continue  # the scheduler records why it cannot fire it
        schedule.next_run_at = timing.initial(cron, now=now, start_at=schedule.start_at, end_at=schedule.end_at)
        schedule.buffered_due_at = None
        schedule.updated_at = now
        moved += 1
    session.flush()
    return moved
