"""Budgets that cannot be overspent: 50 concurrent submissions against a nearly spent budget through a real API
server (real commits, real concurrency), and a batch that pauses at its budget and resumes when it is raised."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import httpx
import pytest
import redis
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.api.app import create_app
from service.config import ModelRateLimit, Settings
from service.db import engine_for, make_session_factory, transaction, utcnow
from service.models import Budget, Job
from service.tenants import service as tenants
from service.usage import budgets
from tests.conftest import TEST_REDIS_URL
from tests.db import fresh_database, redis_url
from tests.procs import free_port
from workers.dispatcher import Dispatcher
from workers.limiter import RateLimiter

BODY = {"model": "MiniMax-M2.7", "params": {"max_tokens": 1000, "messages": [{"role": "user", "content": "hello"}]}}


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, Settings]]:
    settings = Settings(database_url=fresh_database("mmjobs_budget"), redis_url=TEST_REDIS_URL)
    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", settings
    srv.should_exit = True
    thread.join(10)


def test_fifty_concurrent_submissions_never_overspend(server: tuple[str, Settings]) -> None:
    url, settings = server
    factory = make_session_factory(engine_for(settings))
    with transaction(factory) as session:
        new = tenants.create_key(session, tenant_name="thrifty")
        budgets.upsert(session, tenant_id=new.key.tenant_id, api_key_id=None, period="monthly",
                       limit_usd=Decimal("1"), soft_limit_usd=None, now=utcnow())  # fmt: skip
    headers = {"Authorization": f"Bearer {new.secret}"}
    most = Decimal(httpx.post(f"{url}/v1/jobs?dry_run=true", json=BODY, headers=headers).json()["cost_usd"]["max"])
    # Nearly spent: room for exactly 7 more jobs at their maximum cost.
    with transaction(factory) as session:
        b = session.scalars(select(Budget).where(Budget.tenant_id == new.key.tenant_id)).one()
        b.spent_usd = Decimal("1") - most * 7 - most / 2
    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(lambda _: httpx.post(f"{url}/v1/jobs", json=BODY, headers=headers, timeout=30),
                                range(50)))  # fmt: skip
    codes = [r.status_code for r in answers]
    assert codes.count(202) == 7, codes
    assert codes.count(402) == 43
    refused = next(r for r in answers if r.status_code == 402).json()["error"]
    assert refused["type"] == "budget_exceeded"
    assert "budget" in refused["message"]
    with factory() as session:
        b = session.scalars(select(Budget).where(Budget.tenant_id == new.key.tenant_id)).one()
        assert b.reserved_usd == most * 7
        assert b.spent_usd + b.reserved_usd <= b.limit_usd
        stored = session.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == new.key.tenant_id))
        assert stored == 7  # nothing stored for a refused job
    # A finished (here: canceled) job gives its reservation back, and the next submission fits again.
    first = next(r for r in answers if r.status_code == 202).json()["id"]
    assert httpx.post(f"{url}/v1/jobs/{first}/cancel", headers=headers).status_code == 200
    assert httpx.post(f"{url}/v1/jobs", json=BODY, headers=headers).status_code == 202
    assert httpx.post(f"{url}/v1/jobs", json=BODY, headers=headers).status_code == 402


def test_dry_run_estimates_and_stores_nothing(client: TestClient, auth: dict[str, str], session: Session) -> None:
    before = session.scalar(select(func.count()).select_from(Job))
    r = client.post("/v1/jobs", params={"dry_run": "true"}, json=BODY, headers=auth)
    assert r.status_code == 200, r.text
    estimate = r.json()
    assert estimate["object"] == "estimate"
    assert estimate["max_output_tokens"] == 1000
    assert Decimal(estimate["cost_usd"]["min"]) == Decimal(estimate["estimated_input_tokens"]) * Decimal("0.3") / 10**6
    assert Decimal(estimate["cost_usd"]["max"]) == Decimal(estimate["cost_usd"]["min"]) + Decimal("0.0012")
    assert session.scalar(select(func.count()).select_from(Job)) == before


def test_a_batch_pauses_at_its_budget_and_resumes_when_raised(
    client: TestClient,
    auth: dict[str, str],
    session: Session,
    session_factory: sessionmaker[Session],
    settings: Settings,
    api_key: str,
) -> None:
    reqs = [{"custom_id": f"r{i}", **BODY} for i in range(10)]
    bid = client.post("/v1/batches", json={"requests": reqs}, headers=auth).json()["id"]
    key = tenants.authenticate(session, secret=api_key)
    assert key is not None
    most = Decimal(client.post("/v1/jobs?dry_run=true", json=BODY, headers=auth).json()["cost_usd"]["max"])
    budget = budgets.upsert(session, tenant_id=key.tenant_id, api_key_id=None, period="total",
                            limit_usd=most * 3, soft_limit_usd=None, now=utcnow())  # fmt: skip
    rclient = redis.Redis.from_url(redis_url(10))
    rclient.flushdb()
    published: list[str] = []
    custom = settings.model_copy(update={"rate_limits": {"MiniMax-M2.7": ModelRateLimit(rpm=100_000)}})
    d = Dispatcher(custom, RateLimiter(rclient, account="budget-test"), published.append)
    report: Any = d.run(session_factory, now=utcnow())
    assert len(published) == 3
    [wait] = report.waits.values()
    assert wait["reason"] == "budget"
    assert client.get(f"/v1/batches/{bid}", headers=auth).json()["processing_status"] == "in_progress"
    budget.limit_usd = most * 10
    session.flush()
    d.run(session_factory, now=utcnow())
    assert len(published) == 10
    assert len(set(published)) == 10


def test_batch_dry_run_estimates_every_line_and_stores_nothing(
    client: TestClient, auth: dict[str, str], session: Session
) -> None:
    from service.models import Batch

    before = (
        session.scalar(select(func.count()).select_from(Job)),
        session.scalar(select(func.count()).select_from(Batch)),
    )
    reqs = [{"custom_id": f"r{i}", **BODY} for i in range(4)]
    r = client.post("/v1/batches", params={"dry_run": "true"}, json={"requests": reqs}, headers=auth)
    assert r.status_code == 200, r.text
    est = r.json()
    assert est["requests"] == 4
    assert est["max_output_tokens"] == 4000
    one = client.post("/v1/jobs", params={"dry_run": "true"}, json=BODY, headers=auth).json()
    assert Decimal(est["cost_usd"]["max"]) == 4 * Decimal(one["cost_usd"]["max"])
    # A bad line is still named, as without dry_run.
    dup = {"requests": [*reqs, {"custom_id": "r0", **BODY}]}
    bad = client.post("/v1/batches", params={"dry_run": "true"}, json=dup, headers=auth)
    assert bad.status_code == 422
    assert bad.json()["error"]["field"] == "requests[4].custom_id"
    after = (
        session.scalar(select(func.count()).select_from(Job)),
        session.scalar(select(func.count()).select_from(Batch)),
    )
    assert after == before


def test_the_soft_limit_is_crossed_once(session: Session, api_key: str, settings: Settings) -> None:
    from service.usage import ledger

    key = tenants.authenticate(session, secret=api_key)
    assert key is not None
    budgets.upsert(session, tenant_id=key.tenant_id, api_key_id=None, period="monthly", limit_usd=Decimal(1),
                   soft_limit_usd=Decimal("0.0001"), now=utcnow())  # fmt: skip
    crossed = []
    priced = ledger.price({"input_tokens": 1000, "output_tokens": 1000}, model="MiniMax-M2.7", priority=False,
                          prices=settings.price_table())  # fmt: skip
    assert priced is not None
    for attempt in (1, 2, 3):
        crossed += ledger.record(
            session, job_id="job_x", attempt=attempt, tenant_id=key.tenant_id, api_key_id=key.id, batch_id=None,
            model="MiniMax-M2.7", format="anthropic", upstream_request_id=None,
            priced=priced, priority=False, prices=settings.price_table(), now=utcnow(),
        )  # fmt: skip
    assert len(crossed) == 1  # the first charge over the soft limit, not every one after
