"""Two real processes race on real commits over the pairs that deadlocked (issue 13 point 2), each pair started
together at a barrier and repeated: both finish, no client or worker sees an error, the service did not even have
to retry (the lock order of service/db.py holds), and the counts agree with the rows."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from service.api.app import create_app
from service.config import ModelRateLimit
from service.db import new_id, transaction, utcnow
from service.jobs import transitions
from service.jobs.transitions import Claim, Outcome
from service.models import Batch, Budget, Job, JobAttempt, UsageEntry, WebhookDelivery, WebhookEndpoint
from service.usage import budgets
from service.webhooks import outbox
from service.webhooks.events import new_secret
from tests.concurrency.racing import ConflictCounter, factory_for, make_key, race, seed_batch, settings_for
from tests.db import drop_database, fresh_database
from tests.reading import read_batch
from workers import webhooks
from workers.finisher import Finisher
from workers.scheduler import Scheduler

DB = "mmjobs_lock_order"
ROUNDS = 2
UNPACED = {"MiniMax-M2.7": ModelRateLimit(rpm=100_000, tpm=1_000_000_000)}
SUCCESS = Outcome(classification="succeeded", http_status=200, usage={"input_tokens": 3, "output_tokens": 2},
                  result={"content": [], "text": "", "stop_reason": "end_turn", "usage": {}, "raw": {}})  # fmt: skip


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    yield fresh_database(DB)
    drop_database(DB)


@pytest.fixture
def factory(url: str) -> sessionmaker[Session]:
    return factory_for(url)


def counts(factory: sessionmaker[Session], batch_id: str) -> tuple[Batch, dict[str, int]]:
    with factory() as session:
        batch = read_batch(session, batch_id)
        rows = session.execute(
            select(Job.status, func.count()).where(Job.batch_id == batch_id).group_by(Job.status)
        ).all()
        return batch, {status: n for status, n in rows}


# Cancel (API) against the scheduler's dispatch pass.


def cancel_over_the_api(barrier: Any, url: str, batch_id: str, secret: str) -> tuple[int, int]:
    with TestClient(create_app(settings_for(url))) as client:
        conflicts = ConflictCounter().install()
        barrier.wait()
        answer = client.post(f"/v1/batches/{batch_id}/cancel", headers={"Authorization": f"Bearer {secret}"})
        return answer.status_code, conflicts.count


def dispatch_until_ended(barrier: Any, url: str, batch_id: str, secret: str) -> tuple[int, int]:
    s = Scheduler(settings_for(url, rate_limits=UNPACED, max_unclaimed=50))
    s.reachable_since = 0.0  # lease recovery runs from the first pass
    conflicts = ConflictCounter().install()
    factory = s.session_factory
    barrier.wait()
    published = 0
    for _ in range(200):
        published += s.run_once()["published"]  # raises if any step failed
        with factory() as session:
            if session.get_one(Batch, batch_id).status == "ended":
                break
    return published, conflicts.count


def test_canceling_a_batch_while_the_scheduler_dispatches_it(url: str, factory: sessionmaker[Session]) -> None:
    tenant, key, secret = make_key(factory, "cancel-vs-dispatch")
    for _ in range(ROUNDS):
        now = utcnow()
        batch_id, _ = seed_batch(factory, tenant_id=tenant, api_key_id=key, n=400, now=now,
                                 expires_at=now + timedelta(hours=1))  # fmt: skip
        (status, api_conflicts), (_, conflicts) = race(
            cancel_over_the_api, dispatch_until_ended, args=(url, batch_id, secret)
        )
        assert status == 200
        assert api_conflicts == conflicts == 0
        batch, rows = counts(factory, batch_id)
        # Nothing claimed them (no worker runs), so every request ends canceled, dispatched or not.
        assert rows == {"canceled": 400}
        assert (batch.status, batch.processing, batch.canceled) == ("ended", 0, 400)


# Cancel (API: jobs, then the batch) against claims (a job, then its batch's started_at).


def claim_every_job(barrier: Any, url: str, batch_id: str, ids: list[str], secret: str) -> tuple[list[str], int]:
    factory = factory_for(url)
    conflicts = ConflictCounter().install()
    barrier.wait()
    claimed = []
    for job_id in ids:
        with transaction(factory) as session:  # no retry here: a deadlock would fail the test
            if transitions.claim(session, job_id=job_id, owner="w1", lease_seconds=60) is not None:
                claimed.append(job_id)
    return claimed, conflicts.count


def cancel_over_the_api_too(barrier: Any, url: str, batch_id: str, ids: list[str], secret: str) -> tuple[int, int]:
    return cancel_over_the_api(barrier, url, batch_id, secret)


def test_canceling_a_batch_while_a_worker_claims_its_requests(url: str, factory: sessionmaker[Session]) -> None:
    tenant, key, secret = make_key(factory, "cancel-vs-claim")
    for _ in range(ROUNDS):
        now = utcnow()
        batch_id, ids = seed_batch(factory, tenant_id=tenant, api_key_id=key, n=300, now=now,
                                   expires_at=now + timedelta(hours=1))  # fmt: skip
        (claimed, conflicts), (status, api_conflicts) = race(
            claim_every_job, cancel_over_the_api_too, args=(url, batch_id, ids, secret)
        )
        assert status == 200
        assert conflicts == api_conflicts == 0
        # The scheduler cancels whatever the API's first chunk left.
        s = Scheduler(settings_for(url, rate_limits=UNPACED))
        s.run_once()
        batch, rows = counts(factory, batch_id)
        assert rows.get("running", 0) == len(claimed)
        assert rows.get("canceled", 0) == 300 - len(claimed)
        assert (batch.processing, batch.canceled) == (len(claimed), 300 - len(claimed))
        assert batch.status == ("canceling" if claimed else "ended")
        assert (batch.started_at is not None) == bool(claimed)


# A worker's finish (the job, then its attempt) against lease recovery (jobs, then attempts).


def running_batch(factory: sessionmaker[Session], tenant: str, key: str, n: int) -> tuple[str, list[Claim]]:
    """A batch of `n` requests claimed by worker w1, whose leases have all run out."""
    now = utcnow()
    batch_id, ids = seed_batch(factory, tenant_id=tenant, api_key_id=key, n=n, now=now - timedelta(seconds=5),
                               expires_at=now + timedelta(hours=1))  # fmt: skip
    claims = []
    with transaction(factory) as session:
        for job_id in ids:
            claim = transitions.claim(session, job_id=job_id, owner="w1", lease_seconds=60)
            assert claim is not None
            claims.append(claim)
        session.execute(update(Job).where(Job.batch_id == batch_id).values(lease_expires_at=now - timedelta(minutes=1)))
    return batch_id, claims


def finish_every_claim(barrier: Any, url: str, claims: list[Claim]) -> tuple[list[str], int]:
    factory = factory_for(url)
    prices = settings_for(url).price_table()
    conflicts = ConflictCounter().install()
    barrier.wait()
    moved = []
    for claim in claims:
        with transaction(factory) as session:
            if transitions.finish(session, claim=claim, outcome=SUCCESS, prices=prices):
                moved.append(claim.job_id)
    return moved, conflicts.count


def recover_leases(barrier: Any, url: str, claims: list[Claim]) -> tuple[int, int]:
    """Returns how many of these claims' jobs it handed back (the sweep also takes stale leases of other tests)."""
    factory = factory_for(url)
    ours = {c.job_id for c in claims}
    conflicts = ConflictCounter().install()
    barrier.wait()
    recovered: set[str] = set()
    for _ in range(20):
        with transaction(factory) as session:
            recovered |= ours.intersection(transitions.recover_expired_leases(session, limit=50))
    return len(recovered), conflicts.count


def test_finishing_attempts_while_leases_are_recovered(url: str, factory: sessionmaker[Session]) -> None:
    tenant, key, _ = make_key(factory, "finish-vs-recovery")
    for _ in range(ROUNDS):
        batch_id, claims = running_batch(factory, tenant, key, 300)
        (moved, conflicts), (recovered, recovery_conflicts) = race(
            finish_every_claim, recover_leases, args=(url, claims)
        )
        assert conflicts == recovery_conflicts == 0
        batch, rows = counts(factory, batch_id)
        # Each job either finished under its worker or was handed back before the worker wrote: never both.
        assert rows.get("succeeded", 0) == len(moved)
        assert rows.get("retrying", 0) == recovered == 300 - len(moved)
        assert (batch.succeeded, batch.processing) == (len(moved), 300 - len(moved))
        with factory() as session:
            ended = session.scalar(
                select(func.count()).where(
                    JobAttempt.job_id.in_([c.job_id for c in claims]), JobAttempt.ended_at.is_not(None)
                )
            )
        assert ended == 300  # every attempt has its outcome, from the worker or from recovery


# A worker's group commit (workers/finisher.py: jobs in id order, then attempts) against recovery.


class GroupFallbacks(logging.Handler):
    """Counts the groups the Finisher had to record one by one because recording them failed (a deadlock would be
    one): the lock order leaves only jobs that moved on (NotAllLanded, logged at INFO) as a reason."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def finish_in_groups(barrier: Any, url: str, claims: list[Claim]) -> tuple[list[str], int, int, int]:
    """32 call threads end at once and hand their outcomes to one Finisher, as a busy worker process does."""
    factory = factory_for(url)
    prices = settings_for(url).price_table()
    finisher = Finisher(factory, prices, max_group=16)
    conflicts = ConflictCounter().install()
    failures = GroupFallbacks()
    logging.getLogger("workers.finisher").addHandler(failures)

    def end(claim: Claim) -> tuple[str, str | None]:
        if finisher.grouped(claim, SUCCESS):
            return claim.job_id, "group"
        with transaction(factory) as session:
            moved = transitions.finish(session, claim=claim, outcome=SUCCESS, prices=prices)
        return claim.job_id, "alone" if moved else None

    barrier.wait()
    with ThreadPoolExecutor(32) as pool:
        ended = list(pool.map(end, claims))
    moved = [job_id for job_id, how in ended if how]
    return moved, sum(how == "group" for _, how in ended), conflicts.count, failures.count


def test_finishing_attempts_in_groups_while_leases_are_recovered(url: str, factory: sessionmaker[Session]) -> None:
    tenant, key, _ = make_key(factory, "groups-vs-recovery")
    grouped = 0
    for _ in range(ROUNDS):
        batch_id, claims = running_batch(factory, tenant, key, 300)
        # The first half's leases still run (recovery leaves them alone, their groups land whole); the second
        # half's ran out, and the worker ends them while recovery hands them back.
        with transaction(factory) as session:
            session.execute(
                update(Job)
                .where(Job.id.in_([c.job_id for c in claims[:150]]))
                .values(lease_expires_at=utcnow() + timedelta(minutes=5))
            )
        (moved, in_groups, conflicts, failed_groups), (recovered, recovery_conflicts) = race(
            finish_in_groups, recover_leases, args=(url, claims)
        )
        grouped += in_groups
        assert conflicts == recovery_conflicts == failed_groups == 0
        batch, rows = counts(factory, batch_id)
        # Each job either finished under its worker (in a group or alone) or was handed back first: never both.
        assert rows.get("succeeded", 0) == len(moved)
        assert rows.get("retrying", 0) == recovered == 300 - len(moved)
        assert (batch.succeeded, batch.processing) == (len(moved), 300 - len(moved))
        ids = [c.job_id for c in claims]
        with factory() as session:
            ended = session.scalar(
                select(func.count()).where(JobAttempt.job_id.in_(ids), JobAttempt.ended_at.is_not(None))
            )
            # Every attempt billed once, and each job's totals are its ledger row, whichever way it landed.
            billed = session.execute(
                select(UsageEntry.job_id, func.count(), func.sum(UsageEntry.input_tokens))
                .where(UsageEntry.job_id.in_(ids))
                .group_by(UsageEntry.job_id)
            ).all()
            jobs = session.execute(select(Job.id, Job.input_tokens).where(Job.id.in_(ids)))
            totals = {row.id: row.input_tokens for row in jobs}
        assert ended == 300  # every attempt has its outcome, from the worker or from recovery
        assert set(moved) >= {c.job_id for c in claims[:150]}
        assert len(billed) == 300
        assert all(n == 1 and tokens == totals[job_id] == 3 for job_id, n, tokens in billed)
    assert grouped > 0  # groups did form (else this raced only the one-by-one finish above)


# Lease renewal (a worker's multi-row UPDATE) against recovery.


def renew_leases(barrier: Any, url: str, claims: list[Claim]) -> tuple[int, int]:
    factory = factory_for(url)
    held = {c.job_id: (c.number, 7) for c in claims}
    conflicts = ConflictCounter().install()
    barrier.wait()
    alive: set[str] = set()
    for _ in range(20):
        with transaction(factory) as session:
            alive = transitions.extend_leases(session, owner="w1", held=held, lease_seconds=60)
    return len(alive), conflicts.count


def test_renewing_leases_while_they_are_recovered(url: str, factory: sessionmaker[Session]) -> None:
    tenant, key, _ = make_key(factory, "renew-vs-recovery")
    for _ in range(ROUNDS):
        batch_id, claims = running_batch(factory, tenant, key, 300)
        (alive, conflicts), (recovered, recovery_conflicts) = race(renew_leases, recover_leases, args=(url, claims))
        assert conflicts == recovery_conflicts == 0
        _, rows = counts(factory, batch_id)
        # A renewed lease is no longer expired: what recovery took the renewer no longer holds, and the reverse.
        assert rows.get("running", 0) == alive
        assert rows.get("retrying", 0) == recovered == 300 - alive


# charge (several budgets) against reserve/release (by id).


def charge_many(barrier: Any, url: str, tenant: str, key: str, job_id: str) -> int:
    factory = factory_for(url)
    conflicts = ConflictCounter().install()
    barrier.wait()
    for _ in range(200):
        with transaction(factory) as session:
            budgets.charge(session, tenant_id=tenant, api_key_id=key, cost=Decimal("0.01"), now=utcnow())
    return conflicts.count


def reserve_and_release(barrier: Any, url: str, tenant: str, key: str, job_id: str) -> int:
    factory = factory_for(url)
    conflicts = ConflictCounter().install()
    barrier.wait()
    for _ in range(200):
        with transaction(factory) as session:
            refusal = budgets.reserve(session, job_id=job_id, tenant_id=tenant, api_key_id=key,
                                      amount=Decimal("0.5"), now=utcnow())  # fmt: skip
            assert refusal is None
        with transaction(factory) as session:
            budgets.release(session, job_ids=[job_id])
    return conflicts.count


def test_charging_budgets_while_others_reserve_and_release(url: str, factory: sessionmaker[Session]) -> None:
    tenant, key, _ = make_key(factory, "charge-vs-reserve")
    with transaction(factory) as session:
        now = utcnow()
        first = budgets.upsert(session, tenant_id=tenant, api_key_id=None, period="total", limit_usd=Decimal(1000),
                               soft_limit_usd=None, now=now)  # fmt: skip
        budgets.upsert(session, tenant_id=tenant, api_key_id=key, period="total", limit_usd=Decimal(1000),
                       soft_limit_usd=None, now=now)  # fmt: skip
    with transaction(factory) as session:
        # Rewritten, the lower id now lies after the other on disk: a scan meets them against id order.
        session.execute(update(Budget).where(Budget.id == first.id).values(limit_usd=Decimal(999)))
    _, [job_id] = seed_batch(
        factory, tenant_id=tenant, api_key_id=key, n=1, now=now, expires_at=now + timedelta(hours=1)
    )
    for _ in range(ROUNDS):
        assert race(charge_many, reserve_and_release, args=(url, tenant, key, job_id)) == [0, 0]
    with factory() as session:
        rows = session.scalars(select(Budget).where(Budget.tenant_id == tenant)).all()
        assert [b.spent_usd for b in rows] == [Decimal("0.01") * 200 * ROUNDS] * 2
        assert [b.reserved_usd for b in rows] == [0, 0]


# Two workers record a 410 from one endpoint at once: each disables it and fails its pending deliveries.


def record_410(barrier: Any, url: str, delivery_id: str) -> tuple[str, int]:
    factory = factory_for(url)
    now = utcnow()
    with transaction(factory) as session:
        plan = webhooks._claim(session, delivery_id, now=now)
    assert isinstance(plan, webhooks.Plan)
    gone = webhooks.Answer(http_status=410, error=None, latency_ms=1, body="gone", retry_after=None)
    conflicts = ConflictCounter().install()
    barrier.wait()
    with transaction(factory) as session:  # no retry: a deadlock would fail the test
        outcome = webhooks._record(session, plan, gone, now=now, rng=None)
    return outcome, conflicts.count


def test_two_workers_get_410_from_one_endpoint(url: str, factory: sessionmaker[Session]) -> None:
    tenant, _, _ = make_key(factory, "webhook-410")
    for _ in range(ROUNDS):
        with transaction(factory) as session:
            endpoint = WebhookEndpoint(id=new_id("we"), tenant_id=tenant, url="https://example.com/hook",
                                       secret=new_secret(), event_types=[], enabled=True)  # fmt: skip
            session.add(endpoint)
            session.flush()
            for i in range(20):
                outbox.emit(session, tenant_id=tenant, type="job.succeeded", data={"id": f"job_{i}"})
        with factory() as session:
            ids = list(
                session.scalars(
                    select(WebhookDelivery.id)
                    .where(WebhookDelivery.endpoint_id == endpoint.id)
                    .order_by(WebhookDelivery.id)
                )
            )
        (first, c1), (second, c2) = race(record_410, record_410_last, args=(url, ids[0]))
        assert (first, second, c1, c2) == ("failed", "failed", 0, 0)
        with factory() as session:
            assert session.get_one(WebhookEndpoint, endpoint.id).enabled is False
            statuses = session.scalars(select(WebhookDelivery.status).where(WebhookDelivery.endpoint_id == endpoint.id))
            assert set(statuses) == {"failed"}


def record_410_last(barrier: Any, url: str, first_id: str) -> tuple[str, int]:
    """The other worker: the endpoint's last delivery (the first's party got the first)."""
    factory = factory_for(url)
    with factory() as session:
        endpoint_id = session.scalar(select(WebhookDelivery.endpoint_id).where(WebhookDelivery.id == first_id))
        last = session.scalar(
            select(WebhookDelivery.id)
            .where(WebhookDelivery.endpoint_id == endpoint_id)
            .order_by(WebhookDelivery.id.desc())
        )
    assert last is not None
    return record_410(barrier, url, last)
