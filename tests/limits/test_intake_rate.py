"""Request rates at intake (issue 14.3): a burst over a key's or a tenant's rate gets 429 with Retry-After and the
IETF RateLimit fields, while other tenants and keys go on unaffected; health, readiness and metrics never count.

The rates are set so low (one request a minute refills) that nothing refills while a test runs: the counts are
exact whatever the machine's speed."""

from __future__ import annotations

import re
from typing import Any

import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from service.api.app import create_app
from service.config import Settings
from service.limits import intake
from tests.conftest import make_key

# One request a minute, a burst of 600 s worth: quotas of `requests_per_minute * 10` requests at once.
BURST_SECONDS = 600.0


def limited_app(settings: Settings, session_factory: sessionmaker[Session], **limits: int) -> FastAPI:
    custom = settings.model_copy(update={"request_burst_seconds": BURST_SECONDS, **limits})
    app = create_app(custom)
    app.state.session_factory = session_factory
    return app


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def policy(response: Any) -> dict[str, tuple[int, int]]:
    """RateLimit-Policy -> {name: (q, w)}."""
    found = re.findall(r'"(\w+)";q=(\d+);w=(\d+)', response.headers["ratelimit-policy"])
    return {name: (int(q), int(w)) for name, q, w in found}


def remaining(response: Any) -> dict[str, tuple[int, int]]:
    """RateLimit -> {name: (r, t)}."""
    found = re.findall(r'"(\w+)";r=(\d+);t=(\d+)', response.headers["ratelimit"])
    return {name: (int(r), int(t)) for name, r, t in found}


def test_a_burst_over_the_key_rate_gets_429_with_retry_after_and_ratelimit_fields(
    settings: Settings, session_factory: sessionmaker[Session], session: Session
) -> None:
    app = limited_app(settings, session_factory, key_requests_per_minute=1, requests_per_minute=0)
    mine, other = bearer(make_key(session, "bursty")), bearer(make_key(session, "quiet"))
    with TestClient(app) as client:
        answers = [client.get("/v1/jobs", headers=mine) for _ in range(14)]
        assert [r.status_code for r in answers] == [200] * 10 + [429] * 4
        first, last_ok, refused = answers[0], answers[9], answers[10]
        assert policy(first) == {"key": (10, 600)}
        assert remaining(first)["key"][0] == 9
        assert remaining(last_ok)["key"][0] == 0
        assert "retry-after" not in first.headers
        # The refusal: its own error type, when to retry, and the same fields.
        assert refused.json()["error"]["type"] == "rate_limited"
        assert "key_requests_per_minute" in refused.json()["error"]["message"]
        retry_after = int(refused.headers["retry-after"])
        assert 1 <= retry_after <= 60  # one request refills in a minute
        assert remaining(refused)["key"][0] == 0
        assert policy(refused) == {"key": (10, 600)}

        # Another tenant's key is not affected at all.
        theirs = client.get("/v1/jobs", headers=other)
        assert theirs.status_code == 200
        assert remaining(theirs)["key"][0] == 9

        # Never limited: health, readiness, metrics (and they carry no RateLimit fields).
        for path in ("/healthz", "/readyz", "/metrics"):
            r = client.get(path, headers=mine)
            assert r.status_code == 200, (path, r.text)
            assert "ratelimit" not in r.headers
        # Refused requests did not spend anything: still refused, not pushed further out than a minute.
        again = client.get("/v1/jobs", headers=mine)
        assert again.status_code == 429
        assert int(again.headers["retry-after"]) <= 60


def test_the_tenant_rate_binds_all_its_keys_together(
    settings: Settings, session_factory: sessionmaker[Session], session: Session
) -> None:
    # Tenant: 2 a minute (20 at once); each key: 1 a minute (10 at once).
    app = limited_app(settings, session_factory, key_requests_per_minute=1, requests_per_minute=2)
    a1, a2, a3 = (bearer(make_key(session, "many-keys")) for _ in range(3))
    other = bearer(make_key(session, "someone-else"))
    with TestClient(app) as client:
        statuses = [client.get("/v1/jobs", headers=a1).status_code for _ in range(10)]
        statuses += [client.get("/v1/jobs", headers=a2).status_code for _ in range(10)]
        assert statuses == [200] * 20
        # A third key of the same tenant has its own quota left, but the tenant's is spent.
        refused = client.get("/v1/jobs", headers=a3)
        assert refused.status_code == 429
        assert policy(refused) == {"tenant": (20, 600), "key": (10, 600)}
        assert remaining(refused)["tenant"][0] == 0
        assert remaining(refused)["key"][0] == 10  # the refusal cost the key nothing
        assert "requests_per_minute" in refused.json()["error"]["message"]
        assert "tenant" in refused.json()["error"]["message"]
        assert client.get("/v1/jobs", headers=other).status_code == 200


def test_creates_count_too_and_a_refused_create_stores_nothing(
    settings: Settings, session_factory: sessionmaker[Session], session: Session
) -> None:
    app = limited_app(settings, session_factory, key_requests_per_minute=1, requests_per_minute=0)
    key = bearer(make_key(session, "creator"))
    body = {"model": "MiniMax-M2.7", "params": {"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}}
    with TestClient(app) as client:
        codes = [client.post("/v1/jobs", json=body, headers=key).status_code for _ in range(12)]
        assert codes == [202] * 10 + [429] * 2
        listed = client.get("/v1/jobs", headers=bearer(make_key(session, "creator")))  # a fresh key of the tenant
        assert listed.status_code == 200
        assert len(listed.json()["data"]) == 10


def test_redis_out_of_reach_lets_requests_through(
    settings: Settings, session_factory: sessionmaker[Session], session: Session
) -> None:
    app = limited_app(settings, session_factory, key_requests_per_minute=1)
    app.state.redis = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    key = bearer(make_key(session, "no-redis"))
    with TestClient(app) as client:
        r = client.get("/v1/jobs", headers=key)
    assert r.status_code == 200
    assert "ratelimit" not in r.headers


def test_quota_and_window_follow_the_configured_rate() -> None:
    rate = intake.Rate(policy="key", key="k", per_minute=1200, burst_seconds=10)
    assert (rate.quota, rate.interval_us, rate.window_us) == (200, 50_000, 10_000_000)
    slow = intake.Rate(policy="key", key="k", per_minute=2, burst_seconds=10)
    assert slow.quota == 1  # never less than one request at once
    assert slow.interval_us == 30_000_000
