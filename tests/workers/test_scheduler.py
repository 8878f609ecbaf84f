"""One scheduler pass against the real Postgres and Redis: the jobs it dispatches reach the broker as one Redis
pipeline and are marked dispatched; if the broker refuses, nothing is marked and the next pass tries again."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
import redis
from kombu.exceptions import OperationalError
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from service.config import ModelRateLimit, Settings
from service.db import utcnow
from service.models import Job
from tests.db import redis_url
from tests.workers.broker_queue import queued_job_ids, queued_messages
from tests.workers.test_dispatcher import add_jobs
from workers.celery_app import make_celery
from workers.dispatcher import CANDIDATES_PER_GROUP
from workers.scheduler import SATURATED_RECHECK, Scheduler

REDIS_URL = redis_url(14)


@pytest.fixture
def broker() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()


def scheduler(settings: Settings, session_factory: sessionmaker[Session]) -> Scheduler:
    unpaced = {"MiniMax-M2.7": ModelRateLimit(rpm=100_000, tpm=1_000_000_000)}  # pacing has its own tests
    s = Scheduler(settings.model_copy(update={"redis_url": REDIS_URL, "rate_limits": unpaced}))
    s.session_factory = session_factory
    return s


def test_a_pass_publishes_every_due_job_once_and_marks_it_dispatched(
    session: Session, session_factory: sessionmaker[Session], settings: Settings, broker: redis.Redis
) -> None:
    ids = add_jobs(session, "acme", 40)
    result = scheduler(settings, session_factory).run_once()
    assert result["published"] == 40
    assert sorted(queued_job_ids(broker)) == sorted(ids)
    # One message per up to 16 jobs (MMJOBS_JOBS_PER_MESSAGE), split evenly, in the order granted (oldest first).
    assert [len(m) for m in queued_messages(broker)] == [14, 13, 13]
    assert queued_job_ids(broker) == sorted(ids)
    session.expire_all()
    assert None not in session.scalars(select(Job.dispatched_at).where(Job.id.in_(ids))).all()

    # Already dispatched and not yet claimed: the next pass publishes nothing again.
    assert scheduler(settings, session_factory).run_once()["published"] == 0
    assert len(queued_job_ids(broker)) == 40


def test_when_the_broker_refuses_nothing_is_marked_dispatched(
    session: Session, session_factory: sessionmaker[Session], settings: Settings, broker: redis.Redis
) -> None:
    ids = add_jobs(session, "acme", 5)
    s = scheduler(settings, session_factory)
    s.celery = make_celery(settings.model_copy(update={"redis_url": "redis://127.0.0.1:9/0"}))  # nothing listens
    with pytest.raises(OperationalError, match="Connection refused"):
        s.run_once()
    session.expire_all()
    assert session.scalars(select(Job.dispatched_at).where(Job.id.in_(ids))).all() == [None] * 5
    assert queued_job_ids(broker) == []
    # The broker is back: the next pass dispatches them.
    assert scheduler(settings, session_factory).run_once()["published"] == 5


def test_expired_leases_are_handed_back_only_once_workers_could_have_renewed_them(
    session: Session, session_factory: sessionmaker[Session], settings: Settings, broker: redis.Redis
) -> None:
    """After a database outage every lease looks expired, though live workers are about to renew them and record
    their finished calls: the first pass after it (or after start) must not hand those jobs to another worker."""
    [job_id] = add_jobs(session, "acme", 1)
    past = utcnow() - timedelta(minutes=5)
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(status="running", lease_owner="host:1", lease_expires_at=past, attempt_count=1, dispatched_at=past)
    )
    s = scheduler(settings, session_factory)
    assert s.run_once()["recovered"] == 0  # just reached the database: workers get their renewal interval first
    session.expire_all()
    assert session.get_one(Job, job_id).status == "running"

    s.reachable_since = time.monotonic() - 2 * settings.lease_refresh_seconds  # two renewal intervals later
    assert s.run_once()["recovered"] == 1
    session.expire_all()
    assert session.get_one(Job, job_id).status == "retrying"


def test_a_failing_step_does_not_stop_the_others(
    session: Session, session_factory: sessionmaker[Session], settings: Settings, broker: redis.Redis
) -> None:
    """The broker is down, so dispatch fails every pass: expiry and lease recovery still happen in that pass
    (one tenant's trouble, or Redis's, never switches off the rest), and the failure is still reported."""
    [due, overdue, abandoned] = add_jobs(session, "acme", 3)
    past = utcnow() - timedelta(minutes=5)
    session.execute(update(Job).where(Job.id == overdue).values(expires_at=past))
    session.execute(
        update(Job)
        .where(Job.id == abandoned)
        .values(status="running", lease_owner="host:1", lease_expires_at=past, attempt_count=1, dispatched_at=past)
    )
    s = scheduler(settings, session_factory)
    s.celery = make_celery(settings.model_copy(update={"redis_url": "redis://127.0.0.1:9/0"}))  # nothing listens
    s.reachable_since = time.monotonic() - 2 * settings.lease_refresh_seconds
    with pytest.raises(OperationalError, match="Connection refused"):
        s.run_once()
    session.expire_all()
    assert session.get_one(Job, overdue).status == "expired"
    assert session.get_one(Job, abandoned).status == "retrying"
    assert session.get_one(Job, due).dispatched_at is None  # not published, so not marked


def test_a_batch_larger_than_one_pass_reads_is_dispatched_without_waiting_between_passes(
    session: Session, session_factory: sessionmaker[Session], settings: Settings, broker: redis.Redis
) -> None:
    """A pass reads at most CANDIDATES_PER_GROUP jobs of a group. When it grants all it read and the broker still
    has room, the jobs it did not read go in the next pass at once, not scheduler_interval later (that capped
    one large batch at 200 jobs per ~0.6 s: issue 17.1). When the group is drained, the scheduler sleeps again."""
    ids = add_jobs(session, "acme", CANDIDATES_PER_GROUP + 50)
    s = scheduler(settings.model_copy(update={"max_unclaimed": 1_000, "scheduler_interval": 0.5}), session_factory)
    assert s.run_once()["published"] == CANDIDATES_PER_GROUP
    assert s.next_wake == 0.0
    assert s.run_once()["published"] == 50
    assert s.next_wake == 0.5
    assert sorted(queued_job_ids(broker)) == sorted(ids)


def test_a_pass_stopped_by_the_broker_budget_rechecks_soon_not_at_once(
    session: Session, session_factory: sessionmaker[Session], settings: Settings, broker: redis.Redis
) -> None:
    """max_unclaimed reached: nothing more may go until workers claim some, so no busy loop (SATURATED_RECHECK)."""
    add_jobs(session, "acme", 60)
    s = scheduler(settings.model_copy(update={"max_unclaimed": 40}), session_factory)
    assert s.run_once()["published"] == 40
    assert s.next_wake == SATURATED_RECHECK > 0
