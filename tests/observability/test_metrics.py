"""`GET /metrics`: every family, with the values the rows in Postgres and the keys in Redis imply."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from service import status
from service.api.app import create_app
from service.config import Settings
from service.db import new_id, utcnow
from service.models import Job, JobAttempt, UsageEntry, WebhookAttempt, WebhookDelivery, WebhookEvent
from service.observability.metrics import BROKER_QUEUE
from tests.conftest import TEST_REDIS_URL
from tests.observability.conftest import Samples, parse, scrape, value
from workers.celery_app import QUEUE

MODEL = "MiniMax-M2.7"
HOOK = "https://example.com/hook"


def job(tenant_id: str, state: str, *, due_in: float = 0.0) -> Job:
    now = utcnow()
    return Job(
        id=new_id("job"),
        tenant_id=tenant_id,
        model=MODEL,
        format="anthropic",
        status=state,
        params={"max_tokens": 10, "messages": []},
        next_attempt_at=now + timedelta(seconds=due_in),
        expires_at=now + timedelta(days=1),
    )


def usage(tenant_id: str, job_id: str, attempt: int, tokens: tuple[int, int, int, int], cost: str) -> UsageEntry:
    return UsageEntry(
        tenant_id=tenant_id,
        job_id=job_id,
        attempt=attempt,
        model=MODEL,
        format="anthropic",
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        cache_read_tokens=tokens[2],
        cache_write_tokens=tokens[3],
        cost_usd=Decimal(cost),
        price_version="test",
    )


def delivery(event: WebhookEvent, state: str) -> WebhookDelivery:
    return WebhookDelivery(
        id=new_id("whd"), tenant_id=event.tenant_id, event_id=event.id, event_type=event.type, url=HOOK, status=state
    )


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_jobs_attempts_usage_and_webhooks(obs_client: TestClient, session: Session, tenant_id: str) -> None:
    before = scrape(obs_client)
    stale, later, retrying, running, done, failed = (
        job(tenant_id, "queued", due_in=-30),
        job(tenant_id, "queued", due_in=3600),
        job(tenant_id, "retrying", due_in=-1),
        job(tenant_id, "running"),
        job(tenant_id, "succeeded"),
        job(tenant_id, "failed"),
    )
    session.add_all([stale, later, retrying, running, done, failed])
    session.flush()
    session.add_all(
        [
            JobAttempt(job_id=done.id, number=1, classification="rate_limited"),
            JobAttempt(job_id=done.id, number=2, classification="succeeded"),
            JobAttempt(job_id=failed.id, number=1, classification="permanent"),
            JobAttempt(job_id=running.id, number=1),  # in flight: not counted yet
        ]
    )
    for number, (tokens, cost) in enumerate([((100, 20, 5, 1), "0.25"), ((50, 10, 0, 0), "0.5")], start=1):
        session.add(usage(tenant_id, done.id, number, tokens, cost))
    event = WebhookEvent(id=new_id("evt"), tenant_id=tenant_id, type="job.succeeded", data={})
    session.add(event)
    session.flush()
    deliveries = {state: delivery(event, state) for state in ("delivered", "failed", "pending")}
    session.add_all(deliveries.values())
    session.flush()
    for number, http_status in enumerate([500, None, 200], start=1):
        session.add(
            WebhookAttempt(
                delivery_id=deliveries["delivered"].id,
                number=number,
                url=HOOK,
                http_status=http_status,
                latency_ms=12,
            )
        )
    session.commit()

    after = scrape(obs_client)
    assert value(after, "mmjobs_metrics_source_up", source="postgres") == 1
    assert delta(after, before, "mmjobs_jobs", status="queued", model=MODEL) == 2
    assert delta(after, before, "mmjobs_jobs", status="retrying", model=MODEL) == 1
    assert delta(after, before, "mmjobs_jobs", status="running", model=MODEL) == 1
    # Waiting jobs due now: the stale queued one and the retrying one, not the one due in an hour.
    assert delta(after, before, "mmjobs_queue_depth", model=MODEL) == 2
    assert 30 <= value(after, "mmjobs_queue_oldest_age_seconds", model=MODEL) < 120
    assert delta(after, before, "mmjobs_jobs_finished_total", status="succeeded", model=MODEL) == 1
    assert delta(after, before, "mmjobs_jobs_finished_total", status="failed", model=MODEL) == 1
    for classification, count in {"succeeded": 1, "rate_limited": 1, "permanent": 1, "retryable": 0}.items():
        assert delta(after, before, "mmjobs_attempts_total", classification=classification) == count
    for kind, count in {"input": 150, "output": 30, "cache_read": 5, "cache_write": 1}.items():
        assert delta(after, before, "mmjobs_tokens_total", model=MODEL, kind=kind) == count
    assert delta(after, before, "mmjobs_cost_usd_total", model=MODEL) == pytest.approx(0.75)
    assert delta(after, before, "mmjobs_webhook_deliveries_total", outcome="delivered") == 1
    assert delta(after, before, "mmjobs_webhook_deliveries_total", outcome="failed") == 1
    assert delta(after, before, "mmjobs_webhook_deliveries_pending") == 1
    for outcome in ("success", "http_error", "transport_error"):
        assert delta(after, before, "mmjobs_webhook_attempts_total", outcome=outcome) == 1


@pytest.fixture
def test_redis() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(TEST_REDIS_URL)
    yield client
    client.delete(status.STATUS_KEY)
    client.close()


def test_broker_queue_and_limiter_from_redis(obs_client: TestClient, test_redis: redis.Redis) -> None:
    test_redis.delete(status.STATUS_KEY)
    before = scrape(obs_client)
    assert value(before, "mmjobs_scheduler_up") == 0
    assert ("mmjobs_limiter_utilization_ratio", frozenset({("model", MODEL), ("dimension", "requests")})) not in before
    marker = f"test-{new_id('msg')}"
    test_redis.rpush(QUEUE, marker, marker)
    try:
        status.publish(
            test_redis,
            {
                "at": (utcnow() - timedelta(seconds=2)).isoformat(),
                "models": {
                    MODEL: {
                        "model": MODEL,
                        "effective": {"rpm": 200, "tpm": 1_000_000},
                        "used": {"requests": 50, "tokens": 250_000},
                        "factor": 0.5,
                    }
                },
            },
        )
        after = scrape(obs_client)
    finally:
        test_redis.lrem(QUEUE, 0, marker)
    assert delta(after, before, "mmjobs_broker_queue_length") == 2
    assert value(after, "mmjobs_metrics_source_up", source="redis") == 1
    assert value(after, "mmjobs_scheduler_up") == 1
    assert 2 <= value(after, "mmjobs_scheduler_status_age_seconds") < 60
    assert value(after, "mmjobs_limiter_used_requests", model=MODEL) == 50
    assert value(after, "mmjobs_limiter_used_tokens", model=MODEL) == 250_000
    assert value(after, "mmjobs_limiter_effective_rpm", model=MODEL) == 200
    assert value(after, "mmjobs_limiter_effective_tpm", model=MODEL) == 1_000_000
    assert value(after, "mmjobs_limiter_backoff_factor", model=MODEL) == 0.5
    assert value(after, "mmjobs_limiter_utilization_ratio", model=MODEL, dimension="requests") == 0.25
    assert value(after, "mmjobs_limiter_utilization_ratio", model=MODEL, dimension="tokens") == 0.25


def test_broker_queue_name_is_the_celery_queue() -> None:
    assert BROKER_QUEUE == QUEUE


def test_figures_are_cached_between_scrapes(
    settings: Settings, session_factory: sessionmaker[Session], session: Session, tenant_id: str
) -> None:
    app = create_app(settings.model_copy(update={"metrics_cache_seconds": 300}))
    app.state.session_factory = session_factory
    with TestClient(app) as client:
        first = scrape(client)
        session.add(job(tenant_id, "queued"))
        session.commit()
        assert scrape(client) == first


def test_token_required_when_configured(settings: Settings, session_factory: sessionmaker[Session]) -> None:
    app = create_app(settings.model_copy(update={"metrics_token": "s3cret-scrape"}))
    app.state.session_factory = session_factory
    with TestClient(app) as client:
        r = client.get("/metrics")
        assert r.status_code == 401
        assert r.json()["error"]["type"] == "authentication_error"
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        r = client.get("/metrics", headers={"Authorization": "Bearer s3cret-scrape"})
        assert r.status_code == 200
        assert "mmjobs_jobs" in r.text


def test_sources_down_are_reported_not_fatal(settings: Settings, unused_port: int) -> None:
    down = settings.model_copy(
        update={
            "database_url": f"postgresql+psycopg://postgres@127.0.0.1:{unused_port}/nothing",
            "redis_url": f"redis://127.0.0.1:{unused_port}/0",
        }
    )
    with TestClient(create_app(down)) as client:
        r = client.get("/metrics")
    assert r.status_code == 200
    samples = parse(r.text)
    assert value(samples, "mmjobs_metrics_source_up", source="postgres") == 0
    assert value(samples, "mmjobs_metrics_source_up", source="redis") == 0
    assert not any(name == "mmjobs_jobs" for name, _ in samples)


def test_metrics_is_not_in_the_api_schema(obs_client: TestClient) -> None:
    assert "/metrics" not in obs_client.get("/openapi.json").json()["paths"]
