"""`transitions.finish_many` against the real Postgres: a group lands exactly as the same attempts finished one by one
would (jobs, attempts, ledger, the batch's counts and totals), or, when any of its jobs moved on meanwhile or any
attempt was billed already, writes nothing and says so."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.config import Settings
from service.db import utcnow
from service.jobs import transitions
from service.jobs.transitions import Claim, Outcome
from service.models import Job, JobAttempt, UsageEntry
from service.usage import ledger
from tests.reading import fold, read_batch

REQ = {"model": "MiniMax-M2.7", "params": {"max_tokens": 50, "messages": [{"role": "user", "content": "x"}]}}


def done(n: int) -> Outcome:
    return Outcome(
        classification="succeeded", http_status=200, upstream_request_id=f"req-{n}",
        usage={"input_tokens": 100 + n, "output_tokens": 10 + n, "cache_read_tokens": n},
        result={"content": [{"type": "text", "text": f"answer {n}"}], "text": f"answer {n}", "stop_reason": "end_turn",
                "usage": {}, "raw": {"id": n}},
    )  # fmt: skip


def batch_of(client: TestClient, auth: dict[str, str], session: Session, n: int) -> tuple[str, list[Claim]]:
    requests = [{"custom_id": f"r{i}", **REQ} for i in range(n)]
    bid = client.post("/v1/batches", json={"requests": requests}, headers=auth).json()["id"]
    ids = sorted(session.scalars(select(Job.id).where(Job.batch_id == bid)))
    claims = [transitions.claim(session, job_id=i, owner="w1", lease_seconds=30) for i in ids]
    assert all(claims)
    return bid, [c for c in claims if c is not None]


def landed(session: Session, job_id: str) -> dict[str, Any]:
    """What a finish wrote for a job, without its ids and clocks."""
    session.expire_all()
    job = session.get_one(Job, job_id)
    attempt = session.scalars(select(JobAttempt).where(JobAttempt.job_id == job_id)).one()
    entry = session.scalars(select(UsageEntry).where(UsageEntry.job_id == job_id)).one()
    return {
        "job": (job.status, job.result, job.error, job.lease_owner, job.lease_expires_at, job.finished_at is not None,
                job.input_tokens, job.output_tokens, job.cache_read_tokens, job.cache_write_tokens, job.cost_usd),
        "attempt": (attempt.ended_at is not None, attempt.classification, attempt.http_status, attempt.minimax_code,
                    attempt.error_type, attempt.error_message, attempt.upstream_request_id, attempt.input_tokens,
                    attempt.output_tokens, attempt.cache_read_tokens, attempt.cache_write_tokens),
        "ledger": (entry.attempt, entry.model, entry.format, entry.upstream_request_id, entry.input_tokens,
                   entry.output_tokens, entry.cache_read_tokens, entry.cache_write_tokens, entry.cost_usd,
                   entry.priority_tier, entry.price_version, entry.estimated, entry.batch_id is not None),
    }  # fmt: skip


def test_a_group_lands_as_the_same_attempts_finished_one_by_one(
    client: TestClient, auth: dict[str, str], session: Session, settings: Settings
) -> None:
    prices = settings.price_table()
    alone_bid, alone = batch_of(client, auth, session, 5)
    group_bid, group = batch_of(client, auth, session, 5)
    assert all(transitions.groupable(c, done(i)) for i, c in enumerate(group))
    for i, claim in enumerate(alone):
        assert transitions.finish(session, claim=claim, outcome=done(i), prices=prices)
    transitions.finish_many(session, group=[(c, done(i)) for i, c in reversed(list(enumerate(group)))], prices=prices)
    for a, g in zip(alone, group, strict=True):
        assert landed(session, g.job_id) == landed(session, a.job_id)
    assert landed(session, group[3].job_id)["job"][1]["text"] == "answer 3"
    fold(session)
    by_one, by_group = read_batch(session, alone_bid), read_batch(session, group_bid)
    counts = ("status", "processing", "succeeded", "errored", "input_tokens", "output_tokens", "cache_read_tokens",
              "cost_usd")  # fmt: skip
    assert [getattr(by_group, c) for c in counts] == [getattr(by_one, c) for c in counts]
    assert (by_group.succeeded, by_group.input_tokens) == (5, sum(100 + i for i in range(5)))


def snapshot(session: Session, claims: list[Claim]) -> list[Any]:
    session.expire_all()
    ids = [c.job_id for c in claims]
    jobs = session.scalars(select(Job).where(Job.id.in_(ids)))
    attempts = session.scalars(select(JobAttempt).where(JobAttempt.job_id.in_(ids)))
    return [
        sorted((j.id, j.status, j.input_tokens, j.lease_owner) for j in jobs),
        sorted((a.job_id, a.ended_at) for a in attempts),
        sorted(session.scalars(select(UsageEntry.job_id).where(UsageEntry.job_id.in_(ids)))),
    ]


def test_a_group_with_a_job_handed_back_writes_nothing(
    client: TestClient, auth: dict[str, str], session: Session, settings: Settings
) -> None:
    prices = settings.price_table()
    _, claims = batch_of(client, auth, session, 4)
    # The sweeper handed one job back (its lease ran out) before the group was recorded.
    transitions.hand_back(session, owner="w1", job_ids=[claims[2].job_id], now=utcnow())
    before = snapshot(session, claims)
    with pytest.raises(transitions.NotAllLanded, match="1 of 4 jobs"), session.begin_nested():
        transitions.finish_many(session, group=[(c, done(i)) for i, c in enumerate(claims)], prices=prices)
    assert snapshot(session, claims) == before
    # Each alone, as the Finisher then does: three move, the handed-back one keeps its billed attempt.
    moved = [transitions.finish(session, claim=c, outcome=done(i), prices=prices) for i, c in enumerate(claims)]
    assert moved == [True, True, False, True]


def test_a_group_with_an_attempt_billed_already_writes_nothing(
    client: TestClient, auth: dict[str, str], session: Session, settings: Settings
) -> None:
    prices = settings.price_table()
    _, claims = batch_of(client, auth, session, 3)
    first = claims[0]
    earlier = ledger.price({"input_tokens": 5}, model=first.model, priority=False, prices=prices)
    assert earlier is not None
    ledger.record(session, job_id=first.job_id, attempt=first.number, tenant_id=first.tenant_id, api_key_id=None,
                  batch_id=None, model=first.model, format=first.format, upstream_request_id=None, priced=earlier,
                  priority=False, prices=prices, now=utcnow(), budgeted=False)  # fmt: skip
    before = snapshot(session, claims)
    with pytest.raises(transitions.NotAllLanded, match="billed already"), session.begin_nested():
        transitions.finish_many(session, group=[(c, done(i)) for i, c in enumerate(claims)], prices=prices)
    assert snapshot(session, claims) == before


def test_only_billed_successes_of_batch_jobs_without_budgets_are_grouped(
    client: TestClient, auth: dict[str, str], session: Session
) -> None:
    _, [claim] = batch_of(client, auth, session, 1)
    single = client.post("/v1/jobs", json=REQ, headers=auth).json()["id"]
    single_claim = transitions.claim(session, job_id=single, owner="w1", lease_seconds=30)
    assert single_claim is not None
    failed = Outcome(classification="permanent", http_status=400, error_type="invalid_request_error",
                     usage={"input_tokens": 3})  # fmt: skip
    unbilled = Outcome(classification="succeeded", http_status=200, result={"text": ""}, usage={})
    assert transitions.groupable(claim, done(1))
    assert not transitions.groupable(single_claim, done(1))  # a single job's webhook event goes with `finish`
    assert not transitions.groupable(claim, failed)
    assert not transitions.groupable(claim, unbilled)
    assert not transitions.groupable(replace(claim, budgeted=True), done(1))
    assert not transitions.groupable(replace(claim, budget_reserved=True), done(1))
