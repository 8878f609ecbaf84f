"""The claim of a message's jobs (transitions.claim_many: one statement for up to MMJOBS_JOBS_PER_MESSAGE jobs,
issue 17.1) against competing processes: two workers claiming the same jobs in different orders and groupings (a
message delivered twice, a redispatch overlapping an earlier message), and a batch cancel chunking through the same
rows. The claim locks its rows in id order (service/db.py), so nobody deadlocks or has to retry; each job ends up
claimed by exactly one worker with one attempt, or canceled with none."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.db import one_statement, transaction, utcnow
from service.jobs import transitions
from service.models import Job, JobAttempt
from tests.concurrency.racing import ConflictCounter, factory_for, make_key, race, seed_batch
from tests.db import drop_database, fresh_database

DB = "mmjobs_claim_many"
JOBS = 600


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    yield fresh_database(DB)
    drop_database(DB)


def chunks(ids: list[str], size: int) -> list[list[str]]:
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def claim_messages(barrier: Any, url: str, owner: str, messages: list[list[str]]) -> tuple[list[str], int]:
    factory = factory_for(url)
    conflicts = ConflictCounter().install()
    barrier.wait()
    claimed: list[str] = []
    for message in messages:
        with one_statement(factory) as session:  # as the worker claims (workers/execution.py `take`)
            claims = transitions.claim_many(session, job_ids=message, owner=owner, lease_seconds=60)
        assert [c.job_id for c in claims] == [j for j in message if j in {c.job_id for c in claims}]  # in order
        claimed += [c.job_id for c in claims]
    return claimed, conflicts.count


def worker_a(barrier: Any, url: str, first: list[list[str]], _second: Any, _batch: str) -> tuple[list[str], int]:
    return claim_messages(barrier, url, "a", first)


def worker_b(barrier: Any, url: str, _first: Any, second: list[list[str]], _batch: str) -> tuple[list[str], int]:
    return claim_messages(barrier, url, "b", second)


def cancel_batch(barrier: Any, url: str, _first: Any, _second: Any, batch_id: str) -> tuple[int, int]:
    factory = factory_for(url)
    conflicts = ConflictCounter().install()
    barrier.wait()
    time.sleep(0.05)  # a few messages in: the claims and the cancel then meet on the rows in between
    with transaction(factory) as session:
        canceled = transitions.start_batch_cancel(session, batch_id=batch_id, now=utcnow(), limit=50)
    while True:
        with transaction(factory) as session:
            n = transitions.cancel_waiting(session, now=utcnow(), batch_id=batch_id, limit=50)
        canceled += n
        if n == 0:
            return canceled, conflicts.count


@pytest.mark.parametrize("with_cancel", [False, True], ids=["two-workers", "two-workers-and-a-cancel"])
def test_overlapping_claims_and_a_cancel_never_deadlock_and_never_claim_twice(url: str, with_cancel: bool) -> None:
    factory: sessionmaker[Session] = factory_for(url)
    tenant_id, key_id, _ = make_key(factory, "claims")
    now = utcnow()
    batch_id, ids = seed_batch(
        factory, tenant_id=tenant_id, api_key_id=key_id, n=JOBS, now=now, expires_at=now + timedelta(hours=1)
    )
    # The same jobs in other groupings and orders: the first worker in messages of 16 from the oldest, the second
    # in messages of 13 from the newest, each message's ids newest first; the cancel chunks through them meanwhile.
    first = chunks(ids, 16)
    second = [list(reversed(m)) for m in chunks(list(reversed(ids)), 13)]
    parties = (worker_a, worker_b, cancel_batch) if with_cancel else (worker_a, worker_b)
    results = race(*parties, args=(url, first, second, batch_id))
    (a, a_conflicts), (b, b_conflicts) = results[:2]
    canceled, c_conflicts = results[2] if with_cancel else (0, 0)
    assert (a_conflicts, b_conflicts, c_conflicts) == (0, 0, 0)  # no deadlock or serialization failure retried
    assert not set(a) & set(b)  # no job claimed twice
    with factory() as session:
        rows = session.execute(
            select(Job.id, Job.status, Job.lease_owner, Job.attempt_count).where(Job.batch_id == batch_id)
        ).all()
        attempts = dict(
            session.execute(
                select(JobAttempt.job_id, func.count()).where(JobAttempt.job_id.in_(ids)).group_by(JobAttempt.job_id)
            ).all()
        )
    by_status: dict[str, set[str]] = {}
    for row in rows:
        by_status.setdefault(row.status, set()).add(row.id)
        if row.status == "running":
            assert row.lease_owner == ("a" if row.id in a else "b")
            assert (row.attempt_count, attempts.get(row.id)) == (1, 1)
        else:
            assert row.status == "canceled"
            assert (row.attempt_count, attempts.get(row.id)) == (0, None)
    assert by_status.get("running", set()) == set(a) | set(b)
    assert len(by_status.get("canceled", set())) == canceled == JOBS - len(a) - len(b)
    if not with_cancel:
        assert len(a) + len(b) == JOBS
        # Each worker claims its own first message before the other gets that far.
        assert set(first[0]) <= set(a)
        assert set(second[0]) <= set(b)
