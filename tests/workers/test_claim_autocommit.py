"""The worker's claim is one statement run in autocommit (service/db.py `one_statement`, issue 17.1): it is
durable the moment it returns, with no BEGIN or COMMIT round trip, and the pooled connection it used goes back to
running every later unit of work as one transaction. A claim that committed though its answer was lost (the
connection dropped as the statement ended) is taken up by the worker's retry, not left to lapse."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from service.api.app import create_app
from service.config import SIMULATOR_API_KEY, Settings
from service.db import make_engine, make_session_factory, one_statement, transaction
from service.jobs import transitions
from service.models import Job, JobAttempt, UsageEntry
from service.tenants import service as tenants
from simulator.config import SimulatorConfig
from simulator.server import running_simulator
from tests.db import drop_database, fresh_database, redis_url
from tests.workers.runner import run_once
from workers.runtime import Runtime

DATABASE = f"mmjobs_claim_autocommit_{os.getpid()}"
REQ: dict[str, Any] = {
    "model": "MiniMax-M2.7",
    "params": {"max_tokens": 50, "messages": [{"role": "user", "content": "x"}]},
}


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[str, sessionmaker[Session], TestClient, dict[str, str]]]:
    url = fresh_database(DATABASE)
    engine = make_engine(url, pool_size=1, max_overflow=0)  # one connection: every unit of work reuses it
    factory = make_session_factory(engine)
    with transaction(factory) as session:
        key = tenants.create_key(session, tenant_name="claims")
    client = TestClient(create_app(Settings(database_url=url, redis_url=redis_url(13))))
    try:
        yield url, factory, client, {"Authorization": f"Bearer {key.secret}"}
    finally:
        client.close()
        engine.dispose()
        drop_database(DATABASE)


def status_seen_by_another_session(url: str, job_id: str) -> str:
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as other:
        row = other.execute("SELECT status FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None
    return str(row[0])


def test_a_claim_is_committed_when_it_returns(world: Any) -> None:
    url, factory, client, auth = world
    job_id = client.post("/v1/jobs", json=REQ, headers=auth).json()["id"]
    with one_statement(factory) as session:
        claim = transitions.claim(session, job_id=job_id, owner="w1", lease_seconds=60)
        assert claim is not None
        # Still inside the block, nothing committed by us: another session already sees the job running.
        assert status_seen_by_another_session(url, job_id) == "running"


def test_the_connection_a_claim_used_runs_the_next_unit_of_work_as_one_transaction(world: Any) -> None:
    url, factory, client, auth = world
    job_id = client.post("/v1/jobs", json=REQ, headers=auth).json()["id"]
    with one_statement(factory) as session:
        assert transitions.claim(session, job_id=job_id, owner="w1", lease_seconds=60) is not None
    # The pool holds one connection: this is the claim's. A unit of work that fails half-way leaves nothing.
    seen_inside: list[str] = []

    def half_way() -> None:
        with transaction(factory) as session:
            session.execute(update(Job).where(Job.id == job_id).values(status="succeeded"))
            seen_inside.append(status_seen_by_another_session(url, job_id))
            raise RuntimeError("the second step failed")

    with pytest.raises(RuntimeError, match="second step"):
        half_way()
    assert seen_inside == ["running"]  # not committed statement by statement
    assert status_seen_by_another_session(url, job_id) == "running"


def test_a_claim_whose_answer_was_lost_is_run_by_the_retry_not_left_to_lapse(
    world: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message of three jobs: their claim commits, its answer is lost; the retry claims none of them (they are
    running) and takes up all three."""
    url, factory, client, auth = world
    job_ids = [client.post("/v1/jobs", json=REQ, headers=auth).json()["id"] for _ in range(3)]
    real_claim = transitions.claim_many
    lost: list[list[str]] = []

    def claim_then_lose_the_answer(session: Session, **kwargs: Any) -> Any:
        claimed = real_claim(session, **kwargs)
        if not lost:  # the first try: committed (autocommit), then the connection drops before the answer arrives
            lost.append(list(kwargs["job_ids"]))
            raise sa_exc.OperationalError("claim", {}, Exception("server closed the connection unexpectedly"))
        return claimed

    monkeypatch.setattr(transitions, "claim_many", claim_then_lose_the_answer)
    with running_simulator(SimulatorConfig(latency=0, output_tokens=8, seed=1)) as sim:
        settings = Settings(database_url=url, redis_url=redis_url(13), minimax_api_key=SIMULATOR_API_KEY,
                            minimax_base_url=sim)  # fmt: skip
        run_once(settings, factory, *job_ids)
    assert lost == [job_ids]
    for job_id in job_ids:
        with factory() as session:
            job = session.get(Job, job_id)
            assert job is not None
            attempts = session.scalar(select(func.count()).select_from(JobAttempt).where(JobAttempt.job_id == job_id))
            billed = session.scalar(select(func.count()).select_from(UsageEntry).where(UsageEntry.job_id == job_id))
        # Run once, on the attempt that committed: not running until its lease lapses, not a second attempt.
        assert (job.status, job.attempt_count, attempts, billed) == ("succeeded", 1, 1, 1)


def test_a_job_another_thread_of_the_process_is_claiming_is_not_claimed_again() -> None:
    rt = Runtime(Settings(minimax_api_key="sk-unused"))
    try:
        assert rt.start_taking("job_a")
        assert not rt.start_taking("job_a")  # its message delivered twice: the second thread leaves it
        rt.done_taking("job_a")
        rt.register("job_a", 1, "ten_x")
        # Running here: the next attempt's message may come before the thread unregisters; the claim decides, but
        # the take-up of a lost claim is off (`runs`).
        assert rt.runs("job_a")
        assert rt.start_taking("job_a")
        rt.done_taking("job_a")
        rt.unregister("job_a")
        assert not rt.runs("job_a")
    finally:
        rt.upstream_clients.close()


def test_each_worker_process_start_has_its_own_name() -> None:
    """A take-up matches the claim by the process's name: two containers of one host:pid (pid 1 in each, or one
    restarted) must not take up each other's claims."""
    first, second = Runtime(Settings(minimax_api_key="sk-unused")), Runtime(Settings(minimax_api_key="sk-unused"))
    try:
        assert first.owner != second.owner
        assert first.owner.rsplit(":", 1)[0] == second.owner.rsplit(":", 1)[0]  # host:pid, as before, then a nonce
    finally:
        first.upstream_clients.close()
        second.upstream_clients.close()


def test_a_take_up_renews_the_lease_and_never_takes_a_lapsed_one(world: Any) -> None:
    _, factory, client, auth = world
    job_id = client.post("/v1/jobs", json=REQ, headers=auth).json()["id"]
    with one_statement(factory) as session:
        assert transitions.claim(session, job_id=job_id, owner="w1", lease_seconds=5) is not None
    with one_statement(factory) as session:
        assert transitions.claimed_by(session, job_ids=[job_id], owner="w2", lease_seconds=60) == []  # not w2's
        [taken] = transitions.claimed_by(session, job_ids=[job_id], owner="w1", lease_seconds=60)
        assert taken.number == 1
        expires, now = session.execute(
            select(Job.lease_expires_at, func.statement_timestamp()).where(Job.id == job_id)
        ).one()
    assert expires is not None
    assert (expires - now).total_seconds() > 50  # renewed from now, not the claim's 5 s
    lapsed = text("now() - interval '1 second'")
    with transaction(factory) as session:
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=lapsed))
    with one_statement(factory) as session:
        # Lapsed: lease recovery's to hand back, not the worker's to run.
        assert transitions.claimed_by(session, job_ids=[job_id], owner="w1", lease_seconds=60) == []


def test_a_shutdown_hands_back_a_job_whose_claim_is_under_way(world: Any) -> None:
    """The claim committed, the thread has not registered the job yet (microseconds normally; up to `persist`'s
    30 s when the claim's answer was lost): the shutdown's hand-back waits for it instead of leaving the job to
    lapse into lease recovery at the cost of an attempt, and no claim starts after it."""
    _, factory, client, auth = world
    job_id = client.post("/v1/jobs", json=REQ, headers=auth).json()["id"]
    with factory() as session:
        max_attempts = session.get_one(Job, job_id).max_attempts
    rt = Runtime(Settings(minimax_api_key="sk-unused"))
    rt.session_factory = factory
    claimed = threading.Event()

    def claiming_thread() -> None:
        assert rt.start_taking(job_id)
        try:
            with one_statement(factory) as session:
                claim = transitions.claim(session, job_id=job_id, owner=rt.owner, lease_seconds=60)
            assert claim is not None
            claimed.set()
            time.sleep(0.5)
            rt.register(job_id, claim.number, claim.tenant_id)
        finally:
            rt.done_taking(job_id)

    thread = threading.Thread(target=claiming_thread)
    try:
        thread.start()
        assert claimed.wait(10)
        assert rt.hand_back_all() == [job_id]
        assert not rt.start_taking("job_b")  # shutting down: nothing more is claimed
        with factory() as session:
            job = session.get_one(Job, job_id)
            attempt = session.scalars(select(JobAttempt).where(JobAttempt.job_id == job_id)).one()
        assert (job.status, job.lease_owner) == ("retrying", None)
        assert (attempt.classification, job.max_attempts) == ("interrupted", max_attempts + 1)  # not counted
    finally:
        thread.join()
        rt.unregister(job_id)  # as the attempt's own `finally` would: the lease keeper has nothing left to renew
        rt.upstream_clients.close()
