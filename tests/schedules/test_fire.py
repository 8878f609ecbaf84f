"""The scheduler's side: fire_due with an injected clock. One run per due time, DST both ways, overlap and
catch-up policies, run outcomes and webhook events, failures kept as runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from service.config import Settings
from service.db import new_id, utcnow
from service.models import ApiKey, Batch, Job, Schedule, ScheduleRun
from service.usage import budgets
from tests.schedules.conftest import JOB, events, finish_job, listen, make_schedule, runs_of
from workers.cron import fire_due

T0 = datetime(2026, 5, 1, 12, 0, 30, tzinfo=UTC)


def at(minute: int, second: int = 5) -> datetime:
    return datetime(2026, 5, 1, 12, minute, second, tzinfo=UTC)


def tick(session: Session, settings: Settings, now: datetime, schedulers: int = 1) -> None:
    for _ in range(schedulers):
        fire_due(session, settings=settings, now=now)
        session.commit()


def jobs_count(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(Job)) or 0)


def test_one_run_per_due_time_whatever_the_passes(session: Session, key: ApiKey, settings: Settings) -> None:
    schedule = make_schedule(session, key, settings, now=T0, overlap="allow")
    assert schedule.next_run_at == at(1, 0)
    moment = T0
    while moment < at(3, 30):
        tick(session, settings, moment, schedulers=3)
        moment += timedelta(seconds=7)
    runs = runs_of(session, schedule.id)
    assert [r.due_at for r in runs] == [at(1, 0), at(2, 0), at(3, 0)]
    assert {r.status for r in runs} == {"started"}
    assert {r.trigger for r in runs} == {"schedule"}
    jobs = session.scalars(select(Job).where(Job.id.in_([r.job_id for r in runs]))).all()
    assert len(jobs) == 3
    assert {j.meta["schedule_id"] for j in jobs} == {schedule.id}
    assert jobs_count(session) == 3
    session.refresh(schedule)
    assert schedule.next_run_at == at(4, 0)
    assert schedule.last_run_at is not None
    assert schedule.last_run_at >= at(3, 0)


def _day(session: Session, settings: Settings, start: datetime, hours: int) -> None:
    moment = start
    while moment < start + timedelta(hours=hours):
        tick(session, settings, moment, schedulers=2)
        moment += timedelta(minutes=10)


def test_spring_forward_day_runs_once_at_the_shifted_time(session: Session, key: ApiKey, settings: Settings) -> None:
    created = datetime(2026, 3, 7, 17, tzinfo=UTC)
    schedule = make_schedule(session, key, settings, now=created, cron="30 2 * * *", timezone="America/New_York")
    assert schedule.next_run_at == datetime(2026, 3, 8, 7, 30, tzinfo=UTC)  # 02:30 does not exist: 03:30 EDT
    _day(session, settings, datetime(2026, 3, 8, 4, tzinfo=UTC), hours=8)
    runs = runs_of(session, schedule.id)
    assert [r.due_at for r in runs] == [datetime(2026, 3, 8, 7, 30, tzinfo=UTC)]
    assert [r.trigger for r in runs] == ["schedule"]


def test_fall_back_day_runs_once(session: Session, key: ApiKey, settings: Settings) -> None:
    created = datetime(2026, 10, 31, 17, tzinfo=UTC)
    schedule = make_schedule(session, key, settings, now=created, cron="30 1 * * *", timezone="America/New_York")
    _day(session, settings, datetime(2026, 11, 1, 4, tzinfo=UTC), hours=5)  # 00:00 EDT to 00:00 EST + 1 h
    runs = runs_of(session, schedule.id)
    assert [r.due_at for r in runs] == [datetime(2026, 11, 1, 5, 30, tzinfo=UTC)]  # 01:30 EDT, not 01:30 EST too
    session.refresh(schedule)
    assert schedule.next_run_at == datetime(2026, 11, 2, 6, 30, tzinfo=UTC)


def test_overlap_skip_and_allow(session: Session, key: ApiKey, settings: Settings) -> None:
    skip = make_schedule(session, key, settings, now=T0, name="skip", overlap="skip")
    allow = make_schedule(session, key, settings, now=T0, name="allow", overlap="allow")
    tick(session, settings, at(1))
    tick(session, settings, at(2))  # the 12:01 jobs are still queued
    first = runs_of(session, skip.id)[0]
    assert first.job_id is not None
    finish_job(session, first.job_id)
    tick(session, settings, at(3))
    assert [(r.status, r.due_at) for r in runs_of(session, skip.id)] == [
        ("ended", at(1, 0)), ("skipped", at(2, 0)), ("started", at(3, 0)),
    ]  # fmt: skip
    skipped = runs_of(session, skip.id)[1]
    assert skipped.job_id is None
    assert "still going" in (skipped.error or "")
    assert [r.status for r in runs_of(session, allow.id)] == ["started"] * 3


def test_overlap_buffer_one(session: Session, key: ApiKey, settings: Settings) -> None:
    schedule = make_schedule(session, key, settings, now=T0, overlap="buffer_one")
    tick(session, settings, at(1))
    tick(session, settings, at(2))  # 12:02 waits for 12:01
    tick(session, settings, at(3))  # one is already waiting: 12:03 is skipped
    session.refresh(schedule)
    assert schedule.buffered_due_at == at(2, 0)
    first = runs_of(session, schedule.id)[0]
    assert first.job_id is not None
    finish_job(session, first.job_id)
    tick(session, settings, at(3, 20))
    runs = runs_of(session, schedule.id)
    assert [(r.due_at, r.status, r.trigger) for r in runs] == [
        (at(1, 0), "ended", "schedule"), (at(2, 0), "started", "buffered"), (at(3, 0), "skipped", "schedule"),
    ]  # fmt: skip
    session.refresh(schedule)
    assert schedule.buffered_due_at is None


@pytest.mark.parametrize(
    ("catchup", "expected"),
    [
        ("skip", [(5, "schedule")]),
        ("run_once", [(4, "catchup"), (5, "schedule")]),
        ("all", [(1, "catchup"), (2, "catchup"), (3, "catchup"), (4, "catchup"), (5, "schedule")]),
    ],
)
def test_missed_runs_follow_the_catchup_policy(
    session: Session, key: ApiKey, settings: Settings, catchup: str, expected: list[tuple[int, str]]
) -> None:
    schedule = make_schedule(session, key, settings, now=T0, overlap="allow", catchup=catchup)
    tick(session, settings, at(5, 10), schedulers=3)  # no scheduler ran from 12:00:30 to 12:05:10
    runs = runs_of(session, schedule.id)
    assert [(r.due_at, r.trigger) for r in runs] == [(at(m, 0), t) for m, t in expected]


def test_events_and_outcomes(session: Session, key: ApiKey, settings: Settings) -> None:
    listen(session, key.tenant_id)
    schedule = make_schedule(session, key, settings, now=T0, overlap="allow", name="nightly")
    tick(session, settings, at(1))
    tick(session, settings, at(2))
    first, second = runs_of(session, schedule.id)
    started = events(session, "schedule.run.started")
    assert [e["id"] for e in started] == [first.id, second.id]
    assert started[0]["schedule_id"] == schedule.id
    assert started[0]["schedule_name"] == "nightly"
    assert started[0]["job_id"] == first.job_id
    assert started[0]["due_at"] == "2026-05-01T12:01:00Z"
    assert events(session, "schedule.run.ended") == []
    assert first.job_id
    assert second.job_id
    finish_job(session, first.job_id, "succeeded")
    finish_job(session, second.job_id, "failed")
    tick(session, settings, at(2, 30))
    tick(session, settings, at(2, 40))  # ended once, not again
    ended = events(session, "schedule.run.ended")
    assert sorted((e["id"], e["outcome"]) for e in ended) == sorted([(first.id, "succeeded"), (second.id, "failed")])
    assert {r.status for r in runs_of(session, schedule.id)} == {"ended"}


def test_a_run_that_cannot_start_is_recorded_and_the_schedule_goes_on(
    session: Session, key: ApiKey, settings: Settings
) -> None:
    listen(session, key.tenant_id)
    schedule = make_schedule(session, key, settings, now=T0)
    budgets.upsert(
        session, tenant_id=key.tenant_id, api_key_id=None, period="total", limit_usd=Decimal(0), soft_limit_usd=None,
        now=utcnow(),
    )  # fmt: skip
    session.commit()
    tick(session, settings, at(1))
    [run] = runs_of(session, schedule.id)
    assert run.status == "failed"
    assert run.job_id is None
    assert "budget" in (run.error or "")
    assert [e["status"] for e in events(session, "schedule.run.ended")] == ["failed"]
    assert jobs_count(session) == 0
    session.refresh(schedule)
    assert schedule.next_run_at == at(2, 0)


def test_a_due_time_that_already_has_a_run_gets_no_second(session: Session, key: ApiKey, settings: Settings) -> None:
    schedule = make_schedule(session, key, settings, now=T0)
    # Another scheduler made the 12:01 run (its lock gone, say): the unique (schedule_id, due_at) refuses ours.
    session.add(
        ScheduleRun(
            id=new_id("srun"), schedule_id=schedule.id, tenant_id=key.tenant_id, due_at=at(1, 0), trigger="schedule",
            status="skipped", created_at=utcnow(),
        )
    )  # fmt: skip
    session.commit()
    tick(session, settings, at(1))
    assert [r.status for r in runs_of(session, schedule.id)] == ["skipped"]
    assert jobs_count(session) == 0
    session.refresh(schedule)
    assert schedule.next_run_at == at(2, 0)


def test_start_and_end(session: Session, key: ApiKey, settings: Settings) -> None:
    schedule = make_schedule(
        session, key, settings, now=T0, overlap="allow", start_at=at(2, 0).isoformat(), end_at=at(3, 30).isoformat()
    )
    assert schedule.next_run_at == at(2, 0)
    for minute in range(1, 6):
        tick(session, settings, at(minute))
    assert [r.due_at for r in runs_of(session, schedule.id)] == [at(2, 0), at(3, 0)]
    session.refresh(schedule)
    assert schedule.next_run_at is None


def test_batch_runs_and_their_outcome(session: Session, key: ApiKey, settings: Settings) -> None:
    requests = [{"custom_id": f"r{i}", **JOB} for i in range(3)]
    schedule = make_schedule(session, key, settings, now=T0, template={"batch": {"requests": requests}})
    tick(session, settings, at(1))
    [run] = runs_of(session, schedule.id)
    assert run.batch_id is not None
    assert run.job_id is None
    batch = session.get(Batch, run.batch_id)
    assert batch is not None
    assert batch.request_total == 3
    assert batch.meta == {"schedule_id": schedule.id}
    job_ids = session.scalars(select(Job.id).where(Job.batch_id == run.batch_id)).all()
    for i, job_id in enumerate(job_ids):
        finish_job(session, job_id, "succeeded" if i else "failed")
    tick(session, settings, at(1, 30))
    [run] = runs_of(session, schedule.id)
    assert (run.status, run.outcome) == ("ended", "partial")


def test_a_deleted_target_ends_the_run(session: Session, key: ApiKey, settings: Settings) -> None:
    schedule = make_schedule(session, key, settings, now=T0)
    tick(session, settings, at(1))
    [run] = runs_of(session, schedule.id)
    session.execute(update(Job).where(Job.id == run.job_id).values(status="canceled"))
    session.commit()
    session.execute(delete(Job).where(Job.id == run.job_id))
    session.commit()
    tick(session, settings, at(1, 30))
    assert [(r.status, r.outcome) for r in runs_of(session, schedule.id)] == [("ended", "deleted")]


def test_paused_schedules_do_not_fire(session: Session, key: ApiKey, settings: Settings) -> None:
    schedule = make_schedule(session, key, settings, now=T0, enabled=False)
    assert schedule.next_run_at is None
    tick(session, settings, at(2))
    assert runs_of(session, schedule.id) == []
    assert session.scalar(select(func.count()).select_from(Schedule)) == 1
