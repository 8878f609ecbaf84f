"""Revoked keys and disabled tenants run nothing (issue 14.4), through the real code: the revocation the CLI
calls, the scheduler's fire_due with a `now` past the due time, and the dispatcher's real pass."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.db import utcnow
from service.models import ApiKey, Job, Schedule
from service.tenants import service as tenants
from tests.conftest import make_key
from tests.db import redis_url
from tests.schedules.conftest import JOB, events, listen, make_schedule, runs_of
from workers.cron import fire_due
from workers.dispatcher import Dispatcher
from workers.limiter import RateLimiter

T0 = datetime(2026, 5, 1, 12, 0, 30, tzinfo=UTC)
LATER = T0 + timedelta(minutes=5)


def other_key(session: Session, tenant: str = "acme") -> tuple[ApiKey, dict[str, str]]:
    secret = make_key(session, tenant)
    found = tenants.authenticate(session, secret=secret)
    assert found is not None
    return found, {"Authorization": f"Bearer {secret}"}


def test_revoking_a_key_pauses_its_schedules_with_the_reason_and_nothing_fires(
    session: Session, key: ApiKey, settings: Settings, client: TestClient
) -> None:
    listen(session, key.tenant_id)
    mine = make_schedule(session, key, settings, now=T0, name="mine")
    colleague, auth = other_key(session)
    theirs = make_schedule(session, colleague, settings, now=T0, name="theirs")

    revoked = tenants.revoke_key(session, key_id=key.id)
    session.commit()
    assert revoked is not None
    assert revoked.paused_schedules == [mine.id]

    shown = client.get(f"/v1/schedules/{mine.id}", headers=auth).json()
    assert shown["enabled"] is False
    assert shown["next_run_at"] is None
    assert shown["paused_reason"].startswith("api_key_revoked: ")
    assert key.id in shown["paused_reason"]
    assert shown["paused_at"] is not None
    paused = events(session, "schedule.paused")
    assert [(e["id"], e["enabled"]) for e in paused] == [(mine.id, False)]
    assert paused[0]["paused_reason"] == shown["paused_reason"]

    fire_due(session, settings=settings, now=LATER)
    session.commit()
    assert runs_of(session, mine.id) == []
    assert "started" in {r.status for r in runs_of(session, theirs.id)}  # the colleague's schedule is not touched
    assert session.scalars(select(Job.api_key_id)).all() == [colleague.id]


def test_a_schedule_whose_key_was_revoked_some_other_way_is_paused_when_due(
    session: Session, key: ApiKey, settings: Settings
) -> None:
    listen(session, key.tenant_id)
    schedule = make_schedule(session, key, settings, now=T0)
    session.execute(update(ApiKey).where(ApiKey.id == key.id).values(revoked_at=T0))  # e.g. before this rule
    session.commit()
    fire_due(session, settings=settings, now=LATER)
    session.commit()
    assert runs_of(session, schedule.id) == []
    session.refresh(schedule)
    assert (schedule.enabled, schedule.next_run_at) == (False, None)
    assert schedule.paused_reason is not None
    assert schedule.paused_reason.startswith("api_key_revoked: ")
    assert [e["id"] for e in events(session, "schedule.paused")] == [schedule.id]


def test_resuming_with_another_key_hands_the_schedule_to_it(
    session: Session, key: ApiKey, settings: Settings, client: TestClient
) -> None:
    schedule = make_schedule(session, key, settings, now=T0)
    tenants.revoke_key(session, key_id=key.id)
    session.commit()
    colleague, auth = other_key(session)
    resumed = client.post(f"/v1/schedules/{schedule.id}/resume", headers=auth).json()
    assert resumed["enabled"] is True
    assert resumed["paused_reason"] is None
    session.refresh(schedule)
    assert schedule.api_key_id == colleague.id
    assert schedule.next_run_at is not None
    fire_due(session, settings=settings, now=schedule.next_run_at + timedelta(seconds=1))
    session.commit()
    assert session.scalars(select(Job.api_key_id)).all() == [colleague.id]  # never billed to the revoked key


@pytest.fixture
def rclient() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url(11))
    client.flushdb()
    yield client
    client.flushdb()


def test_a_disabled_tenant_fires_nothing_and_dispatches_nothing(
    session: Session,
    session_factory: sessionmaker[Session],
    key: ApiKey,
    settings: Settings,
    client: TestClient,
    auth: dict[str, str],
    rclient: redis.Redis,
) -> None:
    schedule = make_schedule(session, key, settings, now=T0)
    job_id = client.post("/v1/jobs", json=JOB, headers=auth).json()["id"]
    published: list[str] = []
    dispatcher = Dispatcher(settings, RateLimiter(rclient, account="revoke-test", window_seconds=60), published.append)

    assert tenants.disable(session, name="acme") is not None
    session.commit()
    fire_due(session, settings=settings, now=LATER)
    session.commit()
    assert runs_of(session, schedule.id) == []
    dispatcher.run(session_factory, now=utcnow())
    session.commit()
    assert published == []
    job = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
    assert job["status"] == "queued"
    assert job["waiting"]["reason"] == "tenant_disabled"
    shown = client.get(f"/v1/schedules/{schedule.id}", headers=auth).json()
    assert shown["paused_reason"].startswith("tenant_disabled: ")

    # Enabled again: the job goes, and the schedule goes on from now (the due times missed are not caught up).
    assert tenants.enable(session, name="acme") is not None
    session.commit()
    dispatcher.run(session_factory, now=utcnow())
    session.commit()
    assert published == [job_id]
    session.refresh(schedule)
    assert schedule.next_run_at is not None
    assert schedule.next_run_at > utcnow() - timedelta(minutes=1)
    assert client.get(f"/v1/schedules/{schedule.id}", headers=auth).json()["paused_reason"] is None


def test_a_job_published_before_the_tenant_was_disabled_is_not_claimed(
    session: Session, client: TestClient, auth: dict[str, str]
) -> None:
    from service.jobs import transitions

    job_id = client.post("/v1/jobs", json=JOB, headers=auth).json()["id"]
    tenants.disable(session, name="acme")
    session.commit()
    assert transitions.claim(session, job_id=job_id, owner="w1", lease_seconds=60) is None
    assert session.scalar(select(Job.status).where(Job.id == job_id)) == "queued"
    tenants.enable(session, name="acme")
    session.commit()
    assert transitions.claim(session, job_id=job_id, owner="w1", lease_seconds=60) is not None


def test_schedules_of_a_disabled_tenant_are_not_even_locked(session: Session, key: ApiKey, settings: Settings) -> None:
    from service.schedules import repository

    make_schedule(session, key, settings, now=T0)
    tenants.disable(session, name="acme")
    session.commit()
    assert repository.lock_due(session, now=LATER, limit=10) == []
    assert session.scalars(select(Schedule.enabled)).all() == [True]  # its own setting is untouched
