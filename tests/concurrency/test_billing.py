"""Billed exactly once, raced by two real processes on real commits (issue 13.3).

`race(first, second)` runs `first` in one process inside a transaction it keeps open until `second`, in another
process, is seen waiting on one of its locks (pg_stat_activity), then commits: the two overlap for certain, in
that order, with no sleep standing in for synchronisation.

- A worker whose COMMIT reply was lost writes its outcome again (execution.persist): the same attempt finished
  twice, concurrently and one after the other, leaves one ledger row and the job's, batch's and budget's totals
  moved once.
- A cancel racing a finishing call, in both orders: one ledger row, the tokens billed whatever state won, the
  budget hold released and its spend equal to the ledger.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.api.app import create_app
from service.config import Settings
from service.db import make_engine, make_session_factory, transaction, utcnow
from service.jobs import repository as jobs_repository
from service.jobs import transitions
from service.jobs.transitions import Claim
from service.models import Budget, Job, UsageEntry
from service.tenants import service as tenants
from service.usage import budgets
from tests.db import drop_database, fresh_database, redis_url
from tests.reading import fold, read_batch
from workers.execution import success
from workers.providers import Completion, Usage

DATABASE = f"mmjobs_billing_{os.getpid()}"
USAGE = {"input_tokens": 1200, "output_tokens": 300}
REQ = {"model": "MiniMax-M2.7", "params": {"max_tokens": 400, "messages": [{"role": "user", "content": "bill me"}]}}
BOUND = 60.0  # a safety net against a hung build, not a speed check
# Fresh interpreters (no connection or thread inherited from pytest), forked from one server that imported the
# service once.
SPAWN = multiprocessing.get_context("forkserver")
SPAWN.set_forkserver_preload([__name__])


@dataclass(frozen=True)
class Env:
    url: str
    client: TestClient
    factory: sessionmaker[Session]
    auth: dict[str, str]
    tenant_id: str
    settings: Settings


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    url = fresh_database(DATABASE)
    settings = Settings(database_url=url, redis_url=redis_url(13))
    engine = make_engine(url)
    factory = make_session_factory(engine)
    with transaction(factory) as session:
        key = tenants.create_key(session, tenant_name="billing")
        tenant_id = key.key.tenant_id
        budgets.upsert(session, tenant_id=tenant_id, api_key_id=None, period="total", limit_usd=Decimal(100),
                       soft_limit_usd=None, now=utcnow())  # fmt: skip
    client = TestClient(create_app(settings))
    try:
        yield Env(url, client, factory, {"Authorization": f"Bearer {key.secret}"}, tenant_id, settings)
    finally:
        client.close()
        engine.dispose()
        drop_database(DATABASE)


# What each process runs (top level, so a spawned process can import it) ---------------------------------------


def _finish(session: Session, claim: Claim, url: str) -> bool:
    completion = Completion(
        content=[{"type": "text", "text": "ok"}],
        text="ok",
        stop_reason="end_turn",
        usage=Usage(input_tokens=1200, output_tokens=300),
        raw={},
        request_id="req-1",
        model=claim.model,
    )
    outcome = success(completion)  # exactly what a worker writes for a finished call
    return transitions.finish(session, claim=claim, outcome=outcome, prices=Settings(database_url=url).price_table())


def _cancel(session: Session, claim: Claim, url: str) -> bool:
    return jobs_repository.cancel(session, tenant_id=claim.tenant_id, job_id=claim.job_id)


STEPS: dict[str, Callable[[Session, Claim, str], bool]] = {"finish": _finish, "cancel": _cancel}


def _someone_waits_on_a_lock(url: str) -> bool:
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
    return bool(row and row[0])


def _first(url: str, step: str, claim: Claim, written: Any, results: Any) -> None:
    """Run `step`, keep its transaction (and its locks) open until the other process waits on them, commit."""
    import time

    factory = make_session_factory(make_engine(url))
    with transaction(factory) as session:
        results.put(("first", STEPS[step](session, claim, url)))
        session.flush()
        written.set()
        deadline = time.monotonic() + BOUND
        while not _someone_waits_on_a_lock(url):
            if time.monotonic() > deadline:
                raise TimeoutError("the second process never waited on our locks")
            time.sleep(0.01)  # polling a condition, not standing in for one


def _second(url: str, step: str, claim: Claim, written: Any, results: Any) -> None:
    factory = make_session_factory(make_engine(url))
    if not written.wait(BOUND):
        raise TimeoutError("the first process never wrote")
    with transaction(factory) as session:
        results.put(("second", STEPS[step](session, claim, url)))


def race(url: str, claim: Claim, first: str, second: str) -> dict[str, bool]:
    written, results = SPAWN.Event(), SPAWN.Queue()
    procs = [
        SPAWN.Process(target=_first, args=(url, first, claim, written, results)),
        SPAWN.Process(target=_second, args=(url, second, claim, written, results)),
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(BOUND)
    assert [p.exitcode for p in procs] == [0, 0], "a racer failed (see its traceback above)"
    return dict(results.get(timeout=5) for _ in procs)


def _in_parallel(url: str, claim: Claim, barrier: Any, results: Any) -> None:
    """The plain race: both processes released together by a barrier, each in its own transaction."""
    factory = make_session_factory(make_engine(url))
    barrier.wait(BOUND)
    with transaction(factory) as session:
        results.put(_finish(session, claim, url))


# Helpers -----------------------------------------------------------------------------------------------------


def _claimed(env: Env, *, batch: bool) -> Claim:
    if batch:
        r = env.client.post("/v1/batches", json={"requests": [{"custom_id": "a", **REQ}]}, headers=env.auth)
        assert r.status_code in (200, 201, 202), r.text
        with env.factory() as session:
            job_id = session.scalar(select(Job.id).where(Job.batch_id == r.json()["id"]))
    else:
        r = env.client.post("/v1/jobs", json=REQ, headers=env.auth)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
    assert job_id is not None
    with transaction(env.factory) as session:
        claim = transitions.claim(session, job_id=job_id, owner="racer", lease_seconds=60)
    assert claim is not None
    return claim


def _budget(env: Env) -> Budget:
    with env.factory() as session:
        budget = session.scalars(select(Budget).where(Budget.tenant_id == env.tenant_id)).one()
        session.expunge(budget)
    return budget


def _ledger(env: Env, job_id: str) -> list[UsageEntry]:
    with env.factory() as session:
        rows = list(session.scalars(select(UsageEntry).where(UsageEntry.job_id == job_id)))
        for row in rows:
            session.expunge(row)
    return rows


def _job(env: Env, job_id: str) -> dict[str, Any]:
    r = env.client.get(f"/v1/jobs/{job_id}", headers=env.auth)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _ledger_cost(env: Env) -> Decimal:
    with env.factory() as session:
        return Decimal(session.scalar(select(func.coalesce(func.sum(UsageEntry.cost_usd), 0))) or 0)


# Tests -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [False, True], ids=["single", "batch"])
def test_an_outcome_written_twice_at_once_bills_once(env: Env, batch: bool) -> None:
    claim = _claimed(env, batch=batch)

    moved = race(env.url, claim, "finish", "finish")

    assert sorted(moved.values()) == [False, True]  # one write moved the job, the other found it moved
    [row] = _ledger(env, claim.job_id)
    assert (row.attempt, row.input_tokens, row.output_tokens) == (claim.number, 1200, 300)
    job = _job(env, claim.job_id)
    assert job["status"] == "succeeded"
    assert (job["usage"]["input_tokens"], job["usage"]["output_tokens"]) == (1200, 300)
    assert Decimal(job["usage"]["cost_usd"]) == row.cost_usd
    if batch:
        with env.factory() as session:
            b = read_batch(session, str(claim.batch_id))
            assert b is not None
            assert (b.input_tokens, b.output_tokens, b.cost_usd) == (1200, 300, row.cost_usd)
    budget = _budget(env)
    assert budget.spent_usd == _ledger_cost(env)  # the budget moved by this row once, like every row before


def test_a_retried_write_after_a_lost_commit_reply_adds_nothing(env: Env) -> None:
    """The lost-reply case itself: both writes released together by a barrier, then the retry again after both
    committed."""
    claim = _claimed(env, batch=False)
    barrier, results = SPAWN.Barrier(2), SPAWN.Queue()
    procs = [SPAWN.Process(target=_in_parallel, args=(env.url, claim, barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(BOUND)
    assert [p.exitcode for p in procs] == [0, 0]
    assert sorted(results.get(timeout=5) for _ in procs) == [False, True]
    with transaction(env.factory) as session:
        assert not _finish(session, claim, env.url)  # and a third time, after both committed

    assert len(_ledger(env, claim.job_id)) == 1
    job = _job(env, claim.job_id)
    assert (job["usage"]["input_tokens"], job["usage"]["output_tokens"]) == (1200, 300)
    assert _budget(env).spent_usd == _ledger_cost(env)
    usage = env.client.get("/v1/usage", headers=env.auth).json()["total"]
    with env.factory() as session:
        rows = session.scalar(select(func.count()).select_from(UsageEntry))
    assert usage["attempts"] == rows


@pytest.mark.parametrize(("first", "second"), [("finish", "cancel"), ("cancel", "finish")])
def test_a_cancel_racing_a_finishing_call_bills_the_call_once(env: Env, first: str, second: str) -> None:
    claim = _claimed(env, batch=True)
    held_before = _budget(env).reserved_usd

    won = race(env.url, claim, first, second)

    job = _job(env, claim.job_id)
    # Whoever committed first decided the job's state; the loser's write changed nothing.
    assert job["status"] == ("succeeded" if first == "finish" else "canceled")
    assert won == {"first": True, "second": False}
    [row] = _ledger(env, claim.job_id)  # billed either way: MiniMax billed the call whatever we decided
    assert (row.input_tokens, row.output_tokens) == (1200, 300)
    assert (job["usage"]["input_tokens"], job["usage"]["output_tokens"]) == (1200, 300)
    with env.factory() as session:
        fold(session)  # the scheduler's next pass ends the batch
        b = read_batch(session, str(claim.batch_id))
        assert (b.processing, b.succeeded + b.canceled, b.status) == (0, 1, "ended")
        assert (b.input_tokens, b.output_tokens) == (1200, 300)
    budget = _budget(env)
    assert budget.reserved_usd == held_before  # a batch request holds nothing until dispatch
    assert budget.spent_usd == _ledger_cost(env)


def test_a_canceled_single_jobs_hold_settles_to_what_was_billed(env: Env) -> None:
    claim = _claimed(env, batch=False)
    before = _budget(env)
    assert before.reserved_usd > 0  # admission holds the job's maximum cost

    race(env.url, claim, "cancel", "finish")

    after = _budget(env)
    [row] = _ledger(env, claim.job_id)
    assert after.reserved_usd == 0
    assert after.spent_usd - before.spent_usd == row.cost_usd > 0
    assert _job(env, claim.job_id)["status"] == "canceled"
