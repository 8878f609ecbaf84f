"""Several schedulers at once, with real commits on a database of their own: row locks and the unique
(schedule_id, due_at) leave exactly one run per due time. (tests/e2e/test_schedules_e2e.py does the same with
three real scheduler processes and the real clock.)"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.db import make_engine, make_session_factory, transaction
from service.models import Job, ScheduleRun
from service.tenants import service as tenants
from tests.conftest import TEST_REDIS_URL
from tests.db import drop_database, fresh_database
from tests.schedules.conftest import make_schedule
from workers.cron import fire_due

SCHEDULERS = 6
T0 = datetime(2026, 5, 1, 12, 0, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def committed() -> Iterator[tuple[sessionmaker[Session], Settings]]:
    name = f"mmjobs_sched_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"
    url = fresh_database(name)
    engine = make_engine(url, pool_size=SCHEDULERS + 2)
    try:
        yield make_session_factory(engine), Settings(database_url=url, redis_url=TEST_REDIS_URL)
    finally:
        engine.dispose()
        drop_database(name)


def test_concurrent_schedulers_make_one_run_per_due_time(committed: tuple[sessionmaker[Session], Settings]) -> None:
    factory, settings = committed
    with transaction(factory) as session:
        key = tenants.create_key(session, tenant_name="concurrent").key
    with factory() as session:
        ids = [
            make_schedule(session, key, settings, now=T0, name=f"s{i}", overlap="allow", catchup="all").id
            for i in range(5)
        ]
    ticks = [T0 + timedelta(seconds=20 * i) for i in range(1, 10)]  # 12:00:50 ... 12:03:30
    ticks.append(T0 + timedelta(minutes=8))  # and a gap: missed minutes caught up
    barrier = threading.Barrier(SCHEDULERS)
    errors: list[BaseException] = []

    def scheduler() -> None:
        try:
            for now in ticks:
                barrier.wait(timeout=30)
                with transaction(factory) as session:
                    fire_due(session, settings=settings, now=now)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=scheduler) for _ in range(SCHEDULERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    expected = [datetime(2026, 5, 1, 12, m, tzinfo=UTC) for m in range(1, 9)]
    with factory() as session:
        for schedule_id in ids:
            query = select(ScheduleRun.due_at).where(ScheduleRun.schedule_id == schedule_id).order_by("due_at")
            assert list(session.scalars(query)) == expected
        assert session.scalar(select(func.count()).select_from(Job)) == len(ids) * len(expected)
