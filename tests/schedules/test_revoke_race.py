"""A revocation racing a scheduler pass, in two real processes on a database of their own: the pass holds the due
schedule's row lock with its run made but not committed; the revocation waits on that lock, then pauses the
schedule. The run made before the revocation committed stands; nothing fires after it."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Event
from typing import Any

import psycopg
import pytest
from sqlalchemy import select

from service.config import Settings
from service.db import make_engine, make_session_factory, transaction
from service.models import Job, Schedule, ScheduleRun
from service.tenants import service as tenants
from tests.conftest import TEST_REDIS_URL
from tests.db import ADMIN_DSN, database_name, drop_database, fresh_database
from tests.procs import wait_until
from tests.schedules.conftest import make_schedule
from workers.cron import fire_due

T0 = datetime(2026, 5, 1, 12, 0, 30, tzinfo=UTC)
DUE = T0 + timedelta(minutes=1, seconds=5)


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    name = f"mmjobs_revoke_race_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"
    url = fresh_database(name)
    try:
        yield url
    finally:
        drop_database(name)


def scheduler_pass(url: str, fired: Event, release: Event, out: Any) -> None:
    settings = Settings(database_url=url, redis_url=TEST_REDIS_URL)
    engine = make_engine(url)
    try:
        with transaction(make_session_factory(engine)) as session:
            counts = fire_due(session, settings=settings, now=DUE)
            fired.set()
            release.wait(30)  # the schedule's row lock is held until this commits
        out.put(("scheduler", counts["started"]))
    finally:
        engine.dispose()


def revoke(url: str, key_id: str, fired: Event, out: Any) -> None:
    engine = make_engine(url)
    try:
        fired.wait(30)
        with transaction(make_session_factory(engine)) as session:
            revoked = tenants.revoke_key(session, key_id=key_id)
            assert revoked is not None
            paused = revoked.paused_schedules
        out.put(("revoke", paused))
    finally:
        engine.dispose()


def waiting_on_a_row_lock(url: str) -> bool:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
            (database_name(url),),
        ).fetchone()
    return bool(row and row[0])


def test_a_revocation_waits_for_the_pass_that_holds_the_schedule_then_pauses_it(database: str) -> None:
    settings = Settings(database_url=database, redis_url=TEST_REDIS_URL)
    factory = make_session_factory(make_engine(database))
    with transaction(factory) as session:
        key = tenants.create_key(session, tenant_name="racing").key
    with factory() as session:
        schedule_id = make_schedule(session, key, settings, now=T0).id

    ctx = multiprocessing.get_context("spawn")
    fired, release, out = ctx.Event(), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=scheduler_pass, args=(database, fired, release, out)),
        ctx.Process(target=revoke, args=(database, key.id, fired, out)),
    ]
    for p in procs:
        p.start()
    try:
        assert fired.wait(60), "the scheduler pass never fired"
        wait_until(lambda: waiting_on_a_row_lock(database), 30, "the revocation to wait on the schedule's row lock")
        release.set()
        results = dict([out.get(timeout=60), out.get(timeout=60)])
    finally:
        release.set()
        for p in procs:
            p.join(30)
    assert results == {"scheduler": 1, "revoke": [schedule_id]}

    with transaction(factory) as session:
        fire_due(session, settings=settings, now=DUE + timedelta(minutes=10))  # later due times: nothing fires
    with factory() as session:
        schedule = session.get(Schedule, schedule_id)
        assert schedule is not None
        assert (schedule.enabled, schedule.next_run_at) == (False, None)
        assert schedule.paused_reason is not None
        runs = session.scalars(select(ScheduleRun.status).where(ScheduleRun.schedule_id == schedule_id)).all()
        assert runs == ["started"]
        assert len(session.scalars(select(Job.id)).all()) == 1
