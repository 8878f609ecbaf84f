"""One clock (issue 13 point 6): processes whose own clocks are an hour off still dispatch and claim a due job and
never take a live lease for an expired one, because deadlines and leases are judged by the database's clock.
And the retry of last resort (point 2): a real deadlock between two processes is run again, whole, inside the
service, by `run_in_transaction` and by the API, so neither caller sees it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session, sessionmaker

from service.api.app import create_app
from service.api.deps import SessionDep
from service.config import ModelRateLimit
from service.db import db_now, new_id, run_in_transaction, transaction
from service.models import Job, Tenant
from tests.concurrency.racing import factory_for, make_key, race, settings_for
from tests.db import drop_database, fresh_database

DB = "mmjobs_clock_retry"
UNPACED = {"MiniMax-M2.7": ModelRateLimit(rpm=100_000, tpm=1_000_000_000)}


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    yield fresh_database(DB)
    drop_database(DB)


@pytest.fixture
def factory(url: str) -> sessionmaker[Session]:
    return factory_for(url)


def skew_this_process(offset: timedelta) -> None:
    """Every `utcnow` this process calls is `offset` off (its clock is wrong; the database's is not)."""
    import service.db
    import service.jobs.transitions
    import workers.scheduler

    def wrong() -> datetime:
        return datetime.now(UTC) + offset

    for module in (service.db, service.jobs.transitions, workers.scheduler):
        module.utcnow = wrong  # type: ignore[attr-defined]


def lagging_scheduler_and_worker(barrier: Any, url: str, job_id: str) -> tuple[int, bool]:
    from service.jobs import transitions
    from workers.scheduler import Scheduler

    skew_this_process(-timedelta(hours=1))
    s = Scheduler(settings_for(url, rate_limits=UNPACED))
    barrier.wait()
    published = s.run_once()["published"]
    with transaction(s.session_factory) as session:
        claim = transitions.claim(session, job_id=job_id, owner="lagging", lease_seconds=60)
    return published, claim is not None


def hasty_scheduler(barrier: Any, url: str, job_id: str) -> int:
    from workers.scheduler import Scheduler

    skew_this_process(timedelta(hours=1))
    s = Scheduler(settings_for(url, rate_limits=UNPACED))
    s.reachable_since = 0.0  # allowed to judge leases from its first pass
    barrier.wait()
    return s.run_once()["recovered"]


def test_a_scheduler_and_worker_whose_clocks_lag_still_dispatch_and_claim_a_due_job(
    url: str, factory: sessionmaker[Session]
) -> None:
    tenant, _, _ = make_key(factory, "lagging")
    with transaction(factory) as session:
        now = db_now(session)
        job = Job(
            id=new_id("job"), tenant_id=tenant, model="MiniMax-M2.7", format="anthropic", status="queued",
            priority=0, meta={}, params={"messages": []}, estimated_input_tokens=10, max_tokens=50,
            next_attempt_at=now - timedelta(seconds=1), expires_at=now + timedelta(minutes=10),
            created_at=now, updated_at=now,
        )  # fmt: skip
        session.add(job)
    [(published, claimed)] = race(lagging_scheduler_and_worker, args=(url, job.id))
    assert (published, claimed) == (1, True)
    with factory() as session:
        row = session.get_one(Job, job.id)
        now = db_now(session)
        assert row.status == "running"
        # The lease runs 60 s from the database's now, not from an hour ago: recovery will not take it back.
        assert row.lease_expires_at is not None
        assert now < row.lease_expires_at <= now + timedelta(seconds=61)


def test_a_scheduler_whose_clock_runs_ahead_takes_no_live_lease(url: str, factory: sessionmaker[Session]) -> None:
    tenant, _, _ = make_key(factory, "hasty")
    with transaction(factory) as session:
        now = db_now(session)
        job = Job(
            id=new_id("job"), tenant_id=tenant, model="MiniMax-M2.7", format="anthropic", status="running",
            priority=0, meta={}, params={"messages": []}, estimated_input_tokens=10, max_tokens=50, attempt_count=1,
            lease_owner="w1", lease_expires_at=now + timedelta(minutes=5), next_attempt_at=now,
            expires_at=now + timedelta(hours=2), created_at=now, updated_at=now,
        )  # fmt: skip
        session.add(job)
    assert race(hasty_scheduler, args=(url, job.id)) == [0]
    with factory() as session:
        assert session.get_one(Job, job.id).status == "running"


# A real deadlock, retried whole.


def lock_two_rows(session: Session, first: str, second: str, state: dict[str, Any]) -> None:
    """Lock `first`, meet the other party (first attempt only, so both hold one row), then lock `second`."""
    state["attempts"] += 1
    # Postgres aborts whichever waiter checks for a deadlock first: the party under test checks after 1 s, the
    # other after 20 s, so the party under test is the one that must run again.
    session.execute(text(f"SET LOCAL deadlock_timeout = '{state['deadlock_timeout']}'"))
    session.execute(update(Tenant).where(Tenant.id == first).values(name=Tenant.name))
    if state["attempts"] == 1:
        state["barrier"].wait()
    session.execute(update(Tenant).where(Tenant.id == second).values(name=Tenant.name))


def in_a_worker(barrier: Any, url: str, first: str, second: str, deadlock_timeout: str = "1s") -> tuple[int, int]:
    state = {"attempts": 0, "barrier": barrier, "deadlock_timeout": deadlock_timeout}
    run_in_transaction(factory_for(url), lambda session: lock_two_rows(session, first, second, state))
    return 200, state["attempts"]


def over_the_api(barrier: Any, url: str, first: str, second: str) -> tuple[int, int]:
    state = {"attempts": 0, "barrier": barrier, "deadlock_timeout": "1s"}
    app = create_app(settings_for(url))

    @app.post("/test/lock-two-rows")
    def route(session: SessionDep) -> dict[str, bool]:
        lock_two_rows(session, first, second, state)
        return {"ok": True}

    with TestClient(app) as client:
        status = client.post("/test/lock-two-rows").status_code
    return status, state["attempts"]


@pytest.mark.parametrize("party", [in_a_worker, over_the_api])
def test_a_deadlock_is_run_again_and_neither_caller_sees_it(
    url: str, factory: sessionmaker[Session], party: Any
) -> None:
    a, _, _ = make_key(factory, f"deadlock-a-{party.__name__}")
    b, _, _ = make_key(factory, f"deadlock-b-{party.__name__}")
    # Opposite orders: each holds the row the other wants next. Postgres kills one; it must run again and win.
    (status_1, attempts_1), (status_2, attempts_2) = race(party, in_a_worker_reversed, args=(url, a, b))
    assert (status_1, status_2) == (200, 200)
    assert (attempts_1, attempts_2) == (2, 1)  # the party under test was the deadlock's victim, and ran again
    with factory() as session:
        assert len(session.scalars(select(Tenant.id).where(Tenant.id.in_([a, b]))).all()) == 2


def in_a_worker_reversed(barrier: Any, url: str, first: str, second: str) -> tuple[int, int]:
    return in_a_worker(barrier, url, second, first, deadlock_timeout="20s")
