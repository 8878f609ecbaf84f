"""Lease renewal (a worker's multi-row UPDATE of every lease it holds) against a finish holding one of those rows
(issue 17.3): the renewal must not queue behind it. With thousands of calls per process it did, behind hundreds
of finishes, and every other lease of the process lapsed; the sweeper then ran those jobs a second time.

Lock order (service/db.py): the finish takes its job row, then its attempt, then its batch; the renewal takes job
rows in id order, skipping the ones another transaction holds, so it never waits on a finish at all."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from service.db import transaction, utcnow
from service.jobs import transitions
from service.jobs.transitions import Claim, Outcome
from service.models import Job
from tests.concurrency.racing import ConflictCounter, factory_for, make_key, race, settings_for
from tests.concurrency.test_lock_order import running_batch
from tests.db import drop_database, fresh_database

DB = "mmjobs_renew_skips"
SAFETY_NET = 120.0  # a renewal stuck behind the finish fails the test instead of hanging; no speed is asserted
SUCCESS = Outcome(classification="succeeded", http_status=200, usage={"input_tokens": 3, "output_tokens": 2},
                  result={"content": [], "text": "", "stop_reason": "end_turn", "usage": {}, "raw": {}})  # fmt: skip


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    yield fresh_database(DB)
    drop_database(DB)


@pytest.fixture
def factory(url: str) -> sessionmaker[Session]:
    return factory_for(url)


def finish_first_and_hold(barrier: Any, url: str, claims: list[Claim], renewed: Any) -> bool:
    """Finish the first claim, and keep the transaction (its row locks) open until the renewal is done."""
    factory = factory_for(url)
    prices = settings_for(url).price_table()
    with transaction(factory) as session:
        moved = transitions.finish(session, claim=claims[0], outcome=SUCCESS, prices=prices)
        barrier.wait()
        if not renewed.wait(SAFETY_NET):
            raise AssertionError("the renewal waited for the finish's row lock")
    return moved


def renew_all(barrier: Any, url: str, claims: list[Claim], renewed: Any) -> tuple[list[str], int]:
    factory = factory_for(url)
    held = {c.job_id: (c.number, 5) for c in claims}
    conflicts = ConflictCounter().install()
    barrier.wait()
    with transaction(factory) as session:
        alive = transitions.extend_leases(session, owner="w1", held=held, lease_seconds=60)
    renewed.set()
    return sorted(alive), conflicts.count


def hold_the_row(barrier: Any, url: str, claims: list[Claim], renewed: Any) -> bool:
    """Lock the first job's row and change nothing (as a statement that rechecks a row and finds its condition no
    longer holds does), until the renewal is done."""
    factory = factory_for(url)
    with transaction(factory) as session:
        held = session.scalar(select(Job.id).where(Job.id == claims[0].job_id).with_for_update())
        barrier.wait()
        if not renewed.wait(SAFETY_NET):
            raise AssertionError("the renewal waited for the row lock")
    return held is not None


def test_a_row_someone_merely_holds_is_still_ours(url: str, factory: sessionmaker[Session]) -> None:
    """A renewal that meets a locked row judges it by what is committed: a job still running its attempt under this
    worker is ours, and its call goes on (before, it was reported lost and its call stopped: the job failed)."""
    tenant, key, _ = make_key(factory, "renew-vs-lock")
    _, claims = running_batch(factory, tenant, key, 5)
    renewed = mp.get_context("spawn").Event()

    held, (alive, conflicts) = race(hold_the_row, renew_all, args=(url, claims, renewed))

    assert held
    assert conflicts == 0
    assert alive == sorted(c.job_id for c in claims)


def test_renewing_leases_does_not_wait_for_a_finish(url: str, factory: sessionmaker[Session]) -> None:
    tenant, key, _ = make_key(factory, "renew-vs-finish")
    _, claims = running_batch(factory, tenant, key, 50)  # leases already run out: renewal must bring them back
    renewed = mp.get_context("spawn").Event()

    moved, (alive, conflicts) = race(finish_first_and_hold, renew_all, args=(url, claims, renewed))

    assert moved
    assert conflicts == 0
    # The one being finished was not waited for; every other job's lease was renewed and its progress written. The
    # finish had not committed: by what was committed the job still ran, so it is reported ours (its call is over
    # anyway: stopping it would change nothing).
    assert alive == sorted(c.job_id for c in claims)
    with factory() as session:
        rows = {j.id: j for j in session.scalars(select(Job).where(Job.id.in_([c.job_id for c in claims])))}
    assert rows[claims[0].job_id].status == "succeeded"
    now = utcnow()
    for claim in claims[1:]:
        job = rows[claim.job_id]
        assert job.status == "running"
        assert job.lease_expires_at is not None
        assert job.lease_expires_at > now
        assert job.output_tokens_so_far == 5


def test_a_renewal_for_an_older_attempt_neither_extends_nor_writes(url: str, factory: sessionmaker[Session]) -> None:
    """The lease and the progress are written by one statement, only where the attempt is still the one the call
    belongs to: a call of attempt 1 whose job moved on to attempt 2 (under the same worker name) is told to stop,
    and its token count does not overwrite the newer attempt's progress or keep its lease alive."""
    tenant, key, _ = make_key(factory, "renew-old-attempt")
    _, claims = running_batch(factory, tenant, key, 2)
    stale, current = claims
    with transaction(factory) as session:
        session.execute(
            update(Job).where(Job.id == stale.job_id).values(attempt_count=stale.number + 1, output_tokens_so_far=7)
        )
        before = session.scalar(select(Job.lease_expires_at).where(Job.id == stale.job_id))
    held = {stale.job_id: (stale.number, 99), current.job_id: (current.number, 4)}

    with transaction(factory) as session:
        alive = transitions.extend_leases(session, owner="w1", held=held, lease_seconds=60)

    assert alive == {current.job_id}
    with factory() as session:
        rows = {j.id: j for j in session.scalars(select(Job).where(Job.id.in_(held)))}
    assert (rows[stale.job_id].output_tokens_so_far, rows[stale.job_id].lease_expires_at) == (7, before)
    assert rows[current.job_id].output_tokens_so_far == 4
    renewed = rows[current.job_id].lease_expires_at
    assert renewed is not None
    assert renewed > utcnow()
