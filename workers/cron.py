"""Cron schedules, fired by every scheduler process (any number may run): each pass ends the runs whose job or
batch has finished, then fires the due schedules it can lock.

`SELECT ... FOR UPDATE SKIP LOCKED` hands each due schedule to one scheduler at a time, and the unique
(schedule_id, due_at) on runs makes a second run for a due time impossible even if a lock were lost. The domain
logic lives in service/schedules/runs.py; this is the scheduler's entry point.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime

from sqlalchemy.orm import Session

from service.config import Settings
from service.db import utcnow
from service.schedules import repository, runs

log = logging.getLogger("mmjobs.cron")
SCHEDULES_PER_PASS = 100


def fire_due(session: Session, *, settings: Settings, now: datetime | None = None) -> dict[str, int]:
    """One pass, in the caller's transaction (the schedule locks are held until it commits). Returns counts:
    ended, started, skipped, buffered, failed."""
    now = now or utcnow()
    totals: Counter[str] = Counter()
    totals["ended"] = runs.end_finished(session, now=now)
    for schedule in repository.lock_due(session, now=now, limit=SCHEDULES_PER_PASS):
        totals.update(runs.fire(session, schedule, now=now, settings=settings))
    totals.pop("duplicate", None)
    if any(totals.values()):
        log.info("schedules: %s", ", ".join(f"{k} {v}" for k, v in sorted(totals.items()) if v))
    return {k: totals[k] for k in ("ended", "started", "skipped", "buffered", "failed")}
