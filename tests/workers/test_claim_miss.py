"""A claim that misses because the job ended before a worker took it (canceled, expired) returns its permit to the
shared limiter at once (issue 13.7): one batch cancel must not hold hundreds of permits for a minute."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.db import transaction
from service.jobs import transitions
from service.models import Job
from workers.dispatcher import permit_id
from workers.execution import run_job
from workers.limiter import Limits
from workers.runtime import Runtime

MODEL = "MiniMax-M2.7"
REQ: dict[str, Any] = {"model": MODEL, "params": {"max_tokens": 50, "messages": [{"role": "user", "content": "x"}]}}
TENANT_LIMITS = Limits(concurrency=1)
MODEL_LIMITS = Limits(rpm=1)


@pytest.fixture
def rt(settings: Settings, session_factory: sessionmaker[Session]) -> Iterator[Runtime]:
    redis.Redis.from_url(settings.redis_url).flushdb()
    runtime = Runtime(settings.model_copy(update={"minimax_api_key": "sk-unused"}))
    runtime.session_factory = session_factory  # the test's rolled-back connection
    try:
        yield runtime
    finally:
        runtime.upstream_clients.close()
        redis.Redis.from_url(settings.redis_url).flushdb()


def test_a_claim_that_misses_a_canceled_job_returns_its_permit(
    client: TestClient, auth: dict[str, str], rt: Runtime
) -> None:
    job_id = client.post("/v1/jobs", json=REQ, headers=auth).json()["id"]
    with rt.session_factory() as session:
        found = session.get(Job, job_id)
        assert found is not None
        tenant = found.tenant_id
    # What the dispatcher does before publishing the job: a permit for its next attempt.
    permit = permit_id(job_id, 1)
    grant = rt.limiter.acquire(model=MODEL, tenant=tenant, tokens=100, model_limits=MODEL_LIMITS,
                               tenant_limits=TENANT_LIMITS, permit_id=permit)  # fmt: skip
    assert grant.granted
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth).json()["status"] == "canceled"

    run_job(job_id, rt=rt)  # the worker picks the message up after the cancel: its claim misses

    used = rt.limiter.tenant_snapshot(tenant, tenant_limits=TENANT_LIMITS)["used"]
    assert used == {"requests": 0, "tokens": 0, "in_flight": 0}
    assert rt.limiter.snapshot(MODEL, model_limits=MODEL_LIMITS)["used"] == {"requests": 0, "tokens": 0}
    # The room is there for the tenant's next call at once, not a minute later.
    assert rt.limiter.acquire(model=MODEL, tenant=tenant, tokens=100, model_limits=MODEL_LIMITS,
                              tenant_limits=TENANT_LIMITS).granted  # fmt: skip


def test_a_claim_that_misses_a_job_another_worker_runs_keeps_the_permit(
    client: TestClient, auth: dict[str, str], rt: Runtime
) -> None:
    job_id = client.post("/v1/jobs", json=REQ, headers=auth).json()["id"]
    with transaction(rt.session_factory) as session:
        claim = transitions.claim(session, job_id=job_id, owner="other-worker", lease_seconds=60)
    assert claim is not None
    permit = permit_id(job_id, claim.number)
    assert rt.limiter.acquire(model=MODEL, tenant=claim.tenant_id, tokens=100, model_limits=MODEL_LIMITS,
                              tenant_limits=TENANT_LIMITS, permit_id=permit).granted  # fmt: skip

    run_job(job_id, rt=rt)  # a duplicate message: the job is running elsewhere, under that permit

    used = rt.limiter.tenant_snapshot(claim.tenant_id, tenant_limits=TENANT_LIMITS)["used"]
    assert used["in_flight"] == 1
    assert used["requests"] == 1
