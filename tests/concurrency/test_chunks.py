"""One tenant's huge batch cannot stall everyone (issue 13 point 1): a 70,001-request batch whose window has passed
expires through the real scheduler in chunks while another tenant's job is dispatched in the very first pass, its
budget holds are released however many requests land at once, and canceling it over the API answers at once."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.api.app import create_app
from service.config import ModelRateLimit, Settings
from service.db import new_id, transaction, utcnow
from service.jobs import transitions
from service.models import Batch, Budget, BudgetReservation, Job
from service.usage import budgets
from tests.concurrency.racing import REDIS_URL, factory_for, make_key, seed_batch, settings_for
from tests.db import drop_database, fresh_database
from tests.reading import fold
from tests.workers.broker_queue import queued_job_ids
from workers.scheduler import Scheduler

HUGE = 70_001  # past the 65,535 parameters Postgres allows in one statement
UNPACED = {"MiniMax-M2.7": ModelRateLimit(rpm=100_000, tpm=1_000_000_000)}
HOLD = Decimal("0.001")


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    yield fresh_database("mmjobs_chunks")
    drop_database("mmjobs_chunks")


@pytest.fixture
def factory(url: str) -> sessionmaker[Session]:
    return factory_for(url)


@pytest.fixture
def broker() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()


def budget_for(factory: sessionmaker[Session], tenant_id: str) -> str:
    with transaction(factory) as session:
        budget = budgets.upsert(session, tenant_id=tenant_id, api_key_id=None, period="total",
                                limit_usd=Decimal(10_000), soft_limit_usd=None, now=utcnow())  # fmt: skip
        return budget.id


def single_job(factory: sessionmaker[Session], tenant_id: str) -> str:
    now = utcnow()
    job = Job(
        id=new_id("job"), tenant_id=tenant_id, model="MiniMax-M2.7", format="anthropic", status="queued", priority=0,
        meta={}, params={"messages": []}, estimated_input_tokens=10, max_tokens=50, next_attempt_at=now,
        expires_at=now + timedelta(hours=1), created_at=now, updated_at=now,
    )  # fmt: skip
    with transaction(factory) as session:
        session.add(job)
    return job.id


def scheduler(url: str) -> Scheduler:
    return Scheduler(settings_for(url, rate_limits=UNPACED))


def test_an_expired_huge_batch_does_not_stall_another_tenants_job(
    url: str, factory: sessionmaker[Session], broker: redis.Redis
) -> None:
    big, big_key, _ = make_key(factory, "big")
    small, _, _ = make_key(factory, "small")
    budget_id = budget_for(factory, big)
    now = utcnow()
    batch_id, _ = seed_batch(factory, tenant_id=big, api_key_id=big_key, n=HUGE, now=now - timedelta(minutes=2),
                             expires_at=now - timedelta(minutes=1), hold=HOLD, budget_id=budget_id)  # fmt: skip
    waiting = single_job(factory, small)

    s = scheduler(url)
    first = s.run_once()  # raises if any step failed
    assert waiting in queued_job_ids(broker)  # served in the same pass that began expiring the batch
    assert 0 < first["expired"] < HUGE  # a bounded share per pass: the rest goes on next pass
    for _ in range(100):
        s.run_once()
        with factory() as session:
            if session.get_one(Batch, batch_id).status == "ended":
                break
    with factory() as session:
        batch = session.get_one(Batch, batch_id)
        assert (batch.status, batch.processing, batch.expired) == ("ended", 0, HUGE)
        assert session.scalar(select(func.count()).where(Job.batch_id == batch_id, Job.status == "expired")) == HUGE
        budget = session.get_one(Budget, budget_id)
        assert budget.reserved_usd == 0  # every hold released
        assert session.scalar(select(func.count()).select_from(BudgetReservation)) == 0


def test_budget_holds_of_more_jobs_than_postgres_takes_parameters_are_released_in_one_go(
    factory: sessionmaker[Session],
) -> None:
    tenant, key, _ = make_key(factory, "many-holds")
    budget_id = budget_for(factory, tenant)
    now = utcnow()
    batch_id, _ = seed_batch(factory, tenant_id=tenant, api_key_id=key, n=HUGE, now=now - timedelta(minutes=2),
                             expires_at=now - timedelta(minutes=1), hold=HOLD, budget_id=budget_id)  # fmt: skip
    with transaction(factory) as session:
        assert transitions.expire_overdue(session, limit=HUGE + 10) == HUGE  # one statement for all of them
    with factory() as session:
        assert session.get_one(Budget, budget_id).reserved_usd == 0
        fold(session)  # the scheduler's next pass ends the batch
        batch = session.get_one(Batch, batch_id)
        assert (batch.status, batch.expired) == ("ended", HUGE)


def test_canceling_a_huge_batch_answers_at_once_and_the_scheduler_finishes_it(
    url: str, factory: sessionmaker[Session], broker: redis.Redis
) -> None:
    tenant, key, secret = make_key(factory, "canceler")
    now = utcnow()
    batch_id, ids = seed_batch(factory, tenant_id=tenant, api_key_id=key, n=HUGE, now=now,
                               expires_at=now + timedelta(days=1))  # fmt: skip
    settings: Settings = settings_for(url)
    with TestClient(create_app(settings)) as client:
        answer = client.post(f"/v1/batches/{batch_id}/cancel", headers={"Authorization": f"Bearer {secret}"})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["processing_status"] == "canceling"
        assert 0 < body["request_counts"]["canceled"] < HUGE  # a first chunk now, the rest by the scheduler
    s = scheduler(url)
    for _ in range(100):
        s.run_once()
        with factory() as session:
            if session.get_one(Batch, batch_id).status == "ended":
                break
    with factory() as session:
        batch = session.get_one(Batch, batch_id)
        assert (batch.status, batch.processing, batch.canceled) == ("ended", 0, HUGE)
        assert session.scalar(select(func.count()).where(Job.batch_id == batch_id, Job.status == "canceled")) == HUGE
    assert set(queued_job_ids(broker)).isdisjoint(ids)  # nothing of a canceling batch was dispatched
