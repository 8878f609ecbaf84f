"""The guarded transitions a worker makes, against the real Postgres: claim, a retry that is not an ending, a final
failure that is, and a stale worker that can no longer write."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from service.config import Settings
from service.db import utcnow
from service.jobs import transitions
from service.jobs.transitions import Outcome
from service.models import Job
from tests.reading import fold, read_batch

REQ = {"model": "MiniMax-M2.7", "params": {"max_tokens": 50, "messages": [{"role": "user", "content": "x"}]}}


def test_retry_then_final_failure_moves_batch_counts_only_at_the_end(
    client: TestClient, auth: dict[str, str], session: Session, settings: Settings
) -> None:
    bid = client.post("/v1/batches", json={"requests": [{"custom_id": "a", **REQ}]}, headers=auth).json()["id"]
    [job] = session.query(Job).filter(Job.batch_id == bid).all()
    prices = settings.price_table()
    claim = transitions.claim(session, job_id=job.id, owner="w1", lease_seconds=30)
    assert claim is not None
    assert claim.number == 1
    # A second claim of the same job loses.
    assert transitions.claim(session, job_id=job.id, owner="w2", lease_seconds=30) is None
    retry_at = utcnow() - timedelta(seconds=1)
    failed = Outcome(classification="retryable", http_status=500, error_type="api_error", error_message="boom",
                     usage={"input_tokens": 10}, retry_at=retry_at, retry_note="retry 2 of 5")  # fmt: skip
    assert transitions.finish(session, claim=claim, outcome=failed, prices=prices)
    batch = read_batch(session, bid)
    assert job.status == "retrying"
    assert (batch.processing, batch.errored, batch.status) == (1, 0, "in_progress")
    assert batch.input_tokens == 10  # billed tokens count even on a failed attempt
    second = transitions.claim(session, job_id=job.id, owner="w1", lease_seconds=30)
    assert second is not None
    assert second.number == 2
    final = Outcome(classification="permanent", http_status=400, minimax_code=2013, error_type="invalid_request_error",
                    error_message="bad (2013)")  # fmt: skip
    assert transitions.finish(session, claim=second, outcome=final, prices=prices)
    # The first claim's worker comes back late: its write is refused.
    assert not transitions.finish(session, claim=claim, outcome=final, prices=prices)
    batch = read_batch(session, bid)
    assert job.status == "failed"
    assert job.error is not None
    assert job.error["minimax_code"] == 2013
    assert (batch.processing, batch.errored, batch.status) == (0, 1, "in_progress")  # counted at once
    fold(session)  # the scheduler's next pass ends it
    assert read_batch(session, bid).status == "ended"


def test_a_retry_keeps_the_single_jobs_budget_reservation(
    client: TestClient, auth: dict[str, str], session: Session, settings: Settings, api_key: str
) -> None:
    from decimal import Decimal

    from service.models import Budget
    from service.tenants import service as tenants
    from service.usage import budgets

    key = tenants.authenticate(session, secret=api_key)
    assert key is not None
    budgets.upsert(session, tenant_id=key.tenant_id, api_key_id=None, period="total", limit_usd=Decimal(1),
                   soft_limit_usd=None, now=utcnow())  # fmt: skip
    session.commit()
    job_id = client.post("/v1/jobs", json=REQ, headers=auth).json()["id"]
    budget = session.query(Budget).filter(Budget.tenant_id == key.tenant_id).one()
    held = budget.reserved_usd
    assert held > 0
    claim = transitions.claim(session, job_id=job_id, owner="w1", lease_seconds=30)
    assert claim is not None
    retry = Outcome(classification="retryable", http_status=529, error_type="overloaded_error", error_message="busy",
                    retry_at=utcnow(), retry_note="retry 2 of 5")  # fmt: skip
    assert transitions.finish(session, claim=claim, outcome=retry, prices=settings.price_table())
    session.expire_all()
    assert budget.reserved_usd == held  # still running: still held
    claim = transitions.claim(session, job_id=job_id, owner="w1", lease_seconds=30)
    assert claim is not None
    done = Outcome(classification="succeeded", http_status=200, usage={"input_tokens": 5, "output_tokens": 5},
                   result={"content": [], "text": "", "stop_reason": "end_turn", "usage": {}, "raw": {}})  # fmt: skip
    assert transitions.finish(session, claim=claim, outcome=done, prices=settings.price_table())
    session.expire_all()
    assert budget.reserved_usd == 0
    assert budget.spent_usd > 0


def test_a_finish_charges_the_budgets_the_tenant_had_when_the_attempt_was_claimed(
    client: TestClient, auth: dict[str, str], session: Session, settings: Settings, api_key: str
) -> None:
    """The claim says whether the tenant has any budget, so a tenant without one pays no budget query per finish;
    a tenant with one is charged, and a budget written while an attempt runs counts from the next attempt."""
    from decimal import Decimal

    from service.models import Budget
    from service.tenants import service as tenants
    from service.usage import budgets

    key = tenants.authenticate(session, secret=api_key)
    assert key is not None
    done = Outcome(classification="succeeded", http_status=200, usage={"input_tokens": 5, "output_tokens": 5},
                   result={"content": [], "text": "", "stop_reason": "end_turn", "usage": {}, "raw": {}})  # fmt: skip
    retry = Outcome(classification="retryable", http_status=529, usage={"input_tokens": 5},
                    error_type="overloaded_error", error_message="busy", retry_at=utcnow(),
                    retry_note="retry 2 of 5")  # fmt: skip
    job_id = client.post("/v1/jobs", json=REQ, headers=auth).json()["id"]
    unbudgeted = transitions.claim(session, job_id=job_id, owner="w1", lease_seconds=30)
    assert unbudgeted is not None
    assert not unbudgeted.budgeted
    budgets.upsert(session, tenant_id=key.tenant_id, api_key_id=None, period="total", limit_usd=Decimal(1),
                   soft_limit_usd=None, now=utcnow())  # fmt: skip
    assert transitions.finish(session, claim=unbudgeted, outcome=retry, prices=settings.price_table())
    budget = session.query(Budget).filter(Budget.tenant_id == key.tenant_id).one()
    assert budget.spent_usd == 0  # claimed before the budget existed
    budgeted = transitions.claim(session, job_id=job_id, owner="w1", lease_seconds=30)
    assert budgeted is not None
    assert budgeted.budgeted
    assert transitions.finish(session, claim=budgeted, outcome=done, prices=settings.price_table())
    session.expire_all()
    job = session.get(Job, job_id)
    assert job is not None
    assert job.status == "succeeded"
    assert budget.spent_usd > 0
    assert job.cost_usd > budget.spent_usd  # the job's own total has both attempts; the budget the second only


def test_a_billed_attempt_moves_the_jobs_totals_once_whichever_way_it_lands(
    client: TestClient, auth: dict[str, str], session: Session, settings: Settings
) -> None:
    """A finish that moves the job adds its totals in the job's own UPDATE (one statement fewer); one that finds
    the job gone adds them after its ledger row; one that meets a ledger row already there (a retried finish, or a
    row that should not exist) leaves the totals as they were. Each way: one ledger row, the job's totals equal it."""
    from sqlalchemy import func, select

    from service.models import UsageEntry
    from service.usage import ledger

    prices = settings.price_table()
    done = Outcome(classification="succeeded", http_status=200, usage={"input_tokens": 700, "output_tokens": 30},
                   result={"content": [], "text": "", "stop_reason": "end_turn", "usage": {}, "raw": {}})  # fmt: skip

    def billed(job_id: str) -> tuple[int, int, object, object]:
        session.expire_all()
        job = session.get(Job, job_id)
        assert job is not None
        rows = session.execute(
            select(func.count(), func.sum(UsageEntry.cost_usd)).where(UsageEntry.job_id == job_id)
        ).one()
        return rows[0], job.input_tokens, job.cost_usd, rows[1]

    # Moved: the totals ride on the final UPDATE.
    moved_id = client.post("/v1/jobs", json=REQ, headers=auth).json()["id"]
    claim = transitions.claim(session, job_id=moved_id, owner="w1", lease_seconds=30)
    assert claim is not None
    assert transitions.finish(session, claim=claim, outcome=done, prices=prices)
    count, tokens, cost, ledger_cost = billed(moved_id)
    assert (count, tokens, cost) == (1, 700, ledger_cost)
    # The same finish again (its COMMIT reply lost): nothing moves.
    assert not transitions.finish(session, claim=claim, outcome=done, prices=prices)
    assert billed(moved_id) == (1, 700, ledger_cost, ledger_cost)

    # Not moved (canceled while the call ran): billed after the ledger row all the same.
    gone_id = client.post("/v1/jobs", json=REQ, headers=auth).json()["id"]
    claim = transitions.claim(session, job_id=gone_id, owner="w1", lease_seconds=30)
    assert claim is not None
    assert client.post(f"/v1/jobs/{gone_id}/cancel", headers=auth).status_code == 200
    assert not transitions.finish(session, claim=claim, outcome=done, prices=prices)
    count, tokens, cost, ledger_cost = billed(gone_id)
    assert (count, tokens, cost) == (1, 700, ledger_cost)

    # Moved, but the attempt's ledger row is somehow there already: the totals added with the move are taken back.
    odd_id = client.post("/v1/jobs", json=REQ, headers=auth).json()["id"]
    claim = transitions.claim(session, job_id=odd_id, owner="w1", lease_seconds=30)
    assert claim is not None
    earlier = ledger.price({"input_tokens": 5}, model=claim.model, priority=False, prices=prices)
    assert earlier is not None
    ledger.record(session, job_id=odd_id, attempt=claim.number, tenant_id=claim.tenant_id, api_key_id=None,
                  batch_id=None, model=claim.model, format=claim.format, upstream_request_id=None, priced=earlier,
                  priority=False, prices=prices, now=utcnow(), budgeted=False)  # fmt: skip
    assert transitions.finish(session, claim=claim, outcome=done, prices=prices)
    count, tokens, cost, ledger_cost = billed(odd_id)
    assert (count, tokens, cost) == (1, 5, ledger_cost)
