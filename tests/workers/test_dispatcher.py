"""Fair, permit-gated dispatch against the real Postgres and Redis: no head-of-line blocking, tenants served
round-robin, the broker fed no faster than the limits allow."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.config import ModelRateLimit, Settings
from service.db import new_id, utcnow
from service.models import Job
from service.tenants import repository as tenants_repo
from service.tenants import service as tenants
from tests.db import redis_url
from workers.dispatcher import Dispatcher
from workers.limiter import RateLimiter

REDIS_URL = redis_url(10)


@pytest.fixture
def rclient() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()


def add_jobs(session: Session, tenant: str, n: int, *, model: str = "MiniMax-M2.7", priority: int = 0) -> list[str]:
    tenant_id = tenants.get_or_create_tenant(session, name=tenant).id
    now = utcnow()
    ids = []
    for _ in range(n):
        job = Job(
            id=new_id("job"), tenant_id=tenant_id, model=model, format="anthropic", status="queued",
            priority=priority, meta={}, params={"messages": []}, estimated_input_tokens=100, max_tokens=100,
            next_attempt_at=now, expires_at=now + timedelta(hours=1), created_at=now, updated_at=now,
        )  # fmt: skip
        session.add(job)
        ids.append(job.id)
    session.flush()
    return ids


def dispatcher(settings: Settings, rclient: redis.Redis, **overrides: Any) -> tuple[Dispatcher, list[str]]:
    published: list[str] = []
    custom = settings.model_copy(update=overrides)
    d = Dispatcher(custom, RateLimiter(rclient, account="test", window_seconds=60), published.append)
    return d, published


def test_publishes_no_more_than_the_rpm_allows(
    session: Session, session_factory: sessionmaker[Session], settings: Settings, rclient: redis.Redis
) -> None:
    add_jobs(session, "acme", 30)
    d, published = dispatcher(settings, rclient, rate_limits={"MiniMax-M2.7": ModelRateLimit(rpm=12)})
    for _ in range(5):
        d.run(session_factory, now=utcnow())
    assert 1 <= len(published) <= 12
    assert len(set(published)) == len(published)
    # Published jobs are marked, so the next pass does not publish them again.
    marked = session.scalars(select(Job.id).where(Job.dispatched_at.is_not(None))).all()
    assert set(marked) == set(published)


def test_a_saturated_model_does_not_block_another_model(
    session: Session, session_factory: sessionmaker[Session], settings: Settings, rclient: redis.Redis
) -> None:
    add_jobs(session, "acme", 50, model="MiniMax-M2.7")
    m3 = add_jobs(session, "acme", 3, model="MiniMax-M3")
    d, published = dispatcher(settings, rclient, rate_limits={"MiniMax-M2.7": ModelRateLimit(rpm=1)})
    report = d.run(session_factory, now=utcnow())
    d.run(session_factory, now=utcnow())
    assert set(m3) <= set(published)
    assert sum(1 for p in published if p not in m3) == 1
    assert report.waits


def test_a_single_job_of_another_tenant_is_served_within_the_first_grants(
    session: Session, session_factory: sessionmaker[Session], settings: Settings, rclient: redis.Redis
) -> None:
    add_jobs(session, "big", 500)
    [single] = add_jobs(session, "small", 1)
    d, published = dispatcher(settings, rclient, rate_limits={"MiniMax-M2.7": ModelRateLimit(rpm=600)})
    d.run(session_factory, now=utcnow())
    assert single in published[:2]


def test_tenants_share_capacity_round_robin(
    session: Session, session_factory: sessionmaker[Session], settings: Settings, rclient: redis.Redis
) -> None:
    a = set(add_jobs(session, "tenant-a", 40))
    b = set(add_jobs(session, "tenant-b", 40))
    d, published = dispatcher(settings, rclient, rate_limits={"MiniMax-M2.7": ModelRateLimit(rpm=20)})
    for _ in range(3):
        d.run(session_factory, now=utcnow())
    from_a = sum(1 for p in published if p in a)
    from_b = sum(1 for p in published if p in b)
    assert from_a + from_b >= 2
    assert abs(from_a - from_b) <= 1


def test_higher_priority_goes_first_within_a_tenant(
    session: Session, session_factory: sessionmaker[Session], settings: Settings, rclient: redis.Redis
) -> None:
    add_jobs(session, "acme", 20)
    [urgent] = add_jobs(session, "acme", 1, priority=10)
    d, published = dispatcher(settings, rclient, rate_limits={"MiniMax-M2.7": ModelRateLimit(rpm=1)})
    d.run(session_factory, now=utcnow())
    assert published == [urgent]


def test_a_tenant_cap_holds_back_only_that_tenant(
    session: Session, session_factory: sessionmaker[Session], settings: Settings, rclient: redis.Redis
) -> None:
    capped = set(add_jobs(session, "capped", 10))
    free = set(add_jobs(session, "free", 10))
    assert tenants_repo.set_caps(session, name="capped", changes={"concurrency_limit": 2})
    d, published = dispatcher(settings, rclient, rate_limits={"MiniMax-M2.7": ModelRateLimit(rpm=100_000)})
    report = d.run(session_factory, now=utcnow())
    assert sum(1 for p in published if p in capped) == 2
    assert free <= set(published)
    capped_id = tenants_repo.get_tenant_by_name(session, name="capped")
    assert capped_id is not None
    assert report.waits[f"{capped_id.id}|MiniMax-M2.7"]["reason"] == "tenant_cap"


def test_the_broker_never_holds_more_than_max_unclaimed(
    session: Session, session_factory: sessionmaker[Session], settings: Settings, rclient: redis.Redis
) -> None:
    add_jobs(session, "acme", 30)
    d, published = dispatcher(settings, rclient, max_unclaimed=7)
    d.run(session_factory, now=utcnow())
    d.run(session_factory, now=utcnow())
    assert len(published) == 7


def test_a_request_larger_than_the_whole_tpm_fails_with_a_reason(
    session: Session, session_factory: sessionmaker[Session], settings: Settings, rclient: redis.Redis
) -> None:
    [job_id] = add_jobs(session, "acme", 1)
    d, published = dispatcher(settings, rclient, rate_limits={"MiniMax-M2.7": ModelRateLimit(tpm=50)})
    report = d.run(session_factory, now=utcnow())
    assert report.failed == [job_id]
    assert published == []
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None
    assert job.status == "failed"
    assert job.error is not None
    assert "can never be admitted" in job.error["message"]
