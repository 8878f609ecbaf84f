"""A batch's counts without a hot row (issue 17.1, service/batches/tally.py), raced by real processes: workers
finish the batch's requests (each inserting a tally) while two schedulers fold the tallies into the batch row and
a reader polls the batch over the API. Every count and token lands exactly once, a reader never sees a count go
backwards or past the total, the batch ends once, with one `batch.ended` event, and nobody had to retry."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from service.api.app import create_app
from service.batches import repository as batches_repo
from service.batches import tally
from service.db import transaction, utcnow
from service.jobs import transitions
from service.jobs.transitions import Claim, Outcome
from service.models import Batch, BatchTally, UsageEntry, WebhookEvent
from tests.concurrency.racing import ConflictCounter, factory_for, make_key, race, seed_batch, settings_for
from tests.db import drop_database, fresh_database

DB = "mmjobs_batch_tallies"
N = 240
SUCCESS = Outcome(classification="succeeded", http_status=200, usage={"input_tokens": 3, "output_tokens": 2},
                  result={"content": [], "text": "", "stop_reason": "end_turn", "usage": {}, "raw": {}})  # fmt: skip
FAILURE = Outcome(classification="permanent", http_status=400, error_type="invalid_request_error",
                  error_message="bad", usage={"input_tokens": 5})  # fmt: skip


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    yield fresh_database(DB)
    drop_database(DB)


@pytest.fixture
def factory(url: str) -> sessionmaker[Session]:
    return factory_for(url)


def claimed_batch(factory: sessionmaker[Session], tenant: str, key: str, n: int) -> tuple[str, list[Claim]]:
    now = utcnow()
    batch_id, ids = seed_batch(factory, tenant_id=tenant, api_key_id=key, n=n, now=now - timedelta(seconds=5),
                               expires_at=now + timedelta(hours=1))  # fmt: skip
    with transaction(factory) as session:
        claims = [transitions.claim(session, job_id=i, owner="w", lease_seconds=600) for i in ids]
    assert all(claims)
    return batch_id, [c for c in claims if c is not None]


def finish_claims(barrier: Any, url: str, claims: list[Claim]) -> int:
    """A worker: one transaction per finish, every third request failing (billed 5 input tokens)."""
    factory = factory_for(url)
    prices = settings_for(url).price_table()
    conflicts = ConflictCounter().install()
    barrier.wait()
    for i, claim in enumerate(claims):
        with transaction(factory) as session:
            outcome = FAILURE if i % 3 == 0 else SUCCESS
            assert transitions.finish(session, claim=claim, outcome=outcome, prices=prices)
    return conflicts.count


def fold_until_ended(barrier: Any, url: str, batch_id: str) -> tuple[int, int]:
    """A scheduler: fold in a loop until the batch has ended. Returns (batches it ended, conflicts)."""
    factory = factory_for(url)
    conflicts = ConflictCounter().install()
    barrier.wait()
    ended = 0
    for _ in range(5000):
        with transaction(factory) as session:
            ended += batch_id in tally.fold(session, now=utcnow())
        with factory() as session:
            if session.get_one(Batch, batch_id).status == "ended":
                break
    return ended, conflicts.count


def poll_over_the_api(barrier: Any, url: str, batch_id: str, secret: str) -> list[tuple[int, int, int, str]]:
    """A client polling GET /v1/batches/{id}: every answer's (processing, succeeded, errored, status)."""
    seen = []
    with TestClient(create_app(settings_for(url))) as client:
        barrier.wait()
        for _ in range(400):
            answer = client.get(f"/v1/batches/{batch_id}", headers={"Authorization": f"Bearer {secret}"})
            if answer.status_code == 429:  # the key's request rate: wait as told
                time.sleep(float(answer.headers.get("retry-after", "1")))
                continue
            assert answer.status_code == 200, answer.text
            body = answer.json()
            counts = body["request_counts"]
            seen.append((counts["processing"], counts["succeeded"], counts["errored"], body["processing_status"]))
            if body["processing_status"] == "ended":
                break
    return seen


def test_finishes_race_two_folds_and_a_reader(url: str, factory: sessionmaker[Session]) -> None:
    tenant, key, secret = make_key(factory, "tallies")
    batch_id, claims = claimed_batch(factory, tenant, key, N)
    with transaction(factory) as session:  # someone listens: batch.ended is written
        session.execute(update(Batch).where(Batch.id == batch_id).values(webhook_url="https://hooks.example.com/b"))
    half = N // 2
    w1, w2, (ended1, c1), (ended2, c2), seen = race(
        _Bound(finish_claims, url, claims[:half]),
        _Bound(finish_claims, url, claims[half:]),
        _Bound(fold_until_ended, url, batch_id),
        _Bound(fold_until_ended, url, batch_id),
        _Bound(poll_over_the_api, url, batch_id, secret),
    )
    assert w1 == w2 == c1 == c2 == 0  # nobody met a deadlock or a serialization failure
    assert ended1 + ended2 == 1  # one fold ended the batch
    errored = len([i for i in range(half) if i % 3 == 0]) + len([i for i in range(N - half) if i % 3 == 0])
    with factory() as session:
        batch = session.get_one(Batch, batch_id)
        assert (batch.status, batch.processing, batch.succeeded, batch.errored) == ("ended", 0, N - errored, errored)
        assert batch.input_tokens == 3 * (N - errored) + 5 * errored
        assert batch.output_tokens == 2 * (N - errored)
        billed = session.scalar(select(func.sum(UsageEntry.cost_usd)).where(UsageEntry.batch_id == batch_id))
        assert batch.cost_usd == billed
        assert billed > Decimal(0)
        assert session.scalar(select(func.count()).select_from(BatchTally).where(BatchTally.batch_id == batch_id)) == 0
        events = session.scalar(
            select(func.count()).where(
                WebhookEvent.type == "batch.ended", WebhookEvent.data["id"].as_string() == batch_id
            )
        )
        assert events == 1
    # What the reader saw: exact at every moment (processing + finished == total), never going backwards.
    assert seen, "the reader got no answer"
    for processing, succeeded, errored_seen, _ in seen:
        assert processing + succeeded + errored_seen == N
    finished = [s + e for _, s, e, _ in seen]
    assert finished == sorted(finished)
    assert seen[-1] == (0, N - errored, errored, "ended")


class _Bound:
    """A party with its own arguments (race() gives every party the same ones); picklable for spawn."""

    def __init__(self, fn: Any, *args: Any) -> None:
        self.fn, self.args = fn, args
        self.__name__ = fn.__name__

    def __call__(self, barrier: Any) -> Any:
        return self.fn(barrier, *self.args)


def test_a_read_adds_the_tallies_not_folded_yet(url: str, factory: sessionmaker[Session]) -> None:
    """Between folds, the repository's read is the row plus the pending tallies; the row itself is untouched."""
    tenant, key, _ = make_key(factory, "tallies-read")
    batch_id, claims = claimed_batch(factory, tenant, key, 3)
    prices = settings_for(url).price_table()
    with transaction(factory) as session:
        for claim in claims[:2]:
            transitions.finish(session, claim=claim, outcome=SUCCESS, prices=prices)
    with factory() as session:
        row = session.get_one(Batch, batch_id)
        assert (row.processing, row.succeeded, row.input_tokens) == (3, 0, 0)  # not folded yet
    with factory() as session:
        batch = batches_repo.get(session, tenant_id=tenant, batch_id=batch_id)
        assert batch is not None
        assert (batch.processing, batch.succeeded, batch.input_tokens, batch.output_tokens) == (1, 2, 6, 4)
        session.commit()  # the adjusted counts are not written back
    with factory() as session:
        assert session.get_one(Batch, batch_id).succeeded == 0
    with transaction(factory) as session:
        assert tally.fold(session, now=utcnow()) == []  # folded, not ended: one request still runs
    with factory() as session:
        row = session.get_one(Batch, batch_id)
        assert (row.processing, row.succeeded, row.input_tokens, row.status) == (1, 2, 6, "in_progress")
