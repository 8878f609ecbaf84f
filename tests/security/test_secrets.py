"""After a real run (simulator, scheduler, worker), the MiniMax key and the webhook secrets appear in no log,
no database column (but the columns that must keep the webhook secrets to sign with), no Celery message, no
error body and no result."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, text

from tests.e2e.conftest import E2E_REDIS_URL, TERMINAL, Stack
from tests.procs import free_port, wait_http, wait_until

pytestmark = [pytest.mark.security, pytest.mark.e2e]

MINIMAX_KEY = "sk-SECRETVALUE123"
# Where a webhook secret must live: we sign with it.
SECRET_COLUMNS = {("webhook_endpoints", "secret"), ("webhook_endpoints", "previous_secret")}


class SecretStack(Stack):
    """The stack with a recognizable MiniMax key; the worker starts only once the queue has been inspected."""

    def _start(self) -> None:
        self.env["MINIMAX_API_KEY"] = MINIMAX_KEY
        port = self.sim_url.rsplit(":", 1)[1]
        self.simulator = self.start(
            "simulator", ["-m", "simulator", "--port", port, "--latency", "0.1", "--api-keys", MINIMAX_KEY]
        )
        wait_http(self.sim_url + "/healthz", self.simulator)
        self.scheduler = self.start("scheduler", ["-m", "service.cli", "scheduler"])
        from fastapi.testclient import TestClient

        from service.api.app import create_app
        from service.config import Settings
        from service.db import make_engine, make_session_factory, transaction
        from service.tenants import service as tenants

        self.settings = Settings(database_url=self.database_url, redis_url=E2E_REDIS_URL, webhook_allow_loopback=True)
        self.session_factory = make_session_factory(make_engine(self.database_url))
        with transaction(self.session_factory) as session:
            self.api_key = tenants.create_key(session, tenant_name="e2e").secret
        self.client = TestClient(create_app(self.settings))
        self.auth = {"Authorization": f"Bearer {self.api_key}"}


@pytest.fixture(scope="module")
def secret_stack() -> Iterator[SecretStack]:
    with tempfile.TemporaryDirectory(prefix="mmjobs-sec-") as tmp:
        s = SecretStack(Path(tmp))
        try:
            yield s
        finally:
            s.close()


def redis_dump(url: str) -> str:
    r = redis.Redis.from_url(url)
    out = []
    for key in r.scan_iter(count=1000):
        raw_kind = r.type(key)
        kind = raw_kind.decode() if isinstance(raw_kind, bytes) else str(raw_kind)
        out.append(repr(key))
        if kind == "string":
            out.append(repr(r.get(key)))
        elif kind == "list":
            out.extend(repr(v) for v in r.lrange(key, 0, -1))
        elif kind == "hash":
            out.extend(repr(v) for v in r.hgetall(key).items())
        elif kind == "set":
            out.extend(repr(v) for v in r.smembers(key))
        elif kind == "zset":
            out.extend(repr(v) for v in r.zrange(key, 0, -1))
    return "\n".join(out)


def database_dump(url: str) -> dict[tuple[str, str], str]:
    engine = create_engine(url, pool_size=1, max_overflow=0)
    out: dict[tuple[str, str], str] = {}
    try:
        with engine.connect() as conn:
            columns = conn.execute(
                text(
                    "SELECT table_name, column_name FROM information_schema.columns "
                    "WHERE table_schema = 'public' AND data_type IN "
                    "('text', 'character varying', 'json', 'jsonb', 'bytea', 'ARRAY', 'USER-DEFINED')"
                )
            ).all()
            for table, column in columns:
                values = conn.execute(text(f'SELECT "{column}"::text FROM "{table}"')).scalars().all()
                out[(table, column)] = "\n".join(v for v in values if v)
    finally:
        engine.dispose()
    return out


def test_no_secret_leaks_anywhere(secret_stack: SecretStack) -> None:
    s = secret_stack
    dead = f"http://127.0.0.1:{free_port()}/hook"  # nobody listens: deliveries fail and record errors
    endpoint = s.client.post("/v1/webhook-endpoints", json={"url": dead}, headers=s.auth)
    assert endpoint.status_code in (200, 201), endpoint.text
    tenant_secret_r = s.client.post("/v1/webhook-secret", headers=s.auth)
    assert tenant_secret_r.status_code in (200, 201), tenant_secret_r.text
    secrets_ = {
        "minimax key": MINIMAX_KEY,
        "endpoint secret": str(endpoint.json()["secret"]),
        "tenant secret": str(tenant_secret_r.json()["secret"]),
        "api key": s.api_key,
    }
    for value in secrets_.values():
        assert len(value) > 10

    ok = s.submit("hello", webhook_url=dead)
    batch = s.client.post(
        "/v1/batches",
        json={
            "requests": [
                {
                    "custom_id": f"r{i}",
                    "model": "MiniMax-M2.7",
                    "params": {"max_tokens": 50, "messages": [{"role": "user", "content": f"q{i}"}]},
                }
                for i in range(3)
            ],
            "webhook_url": dead,
        },
        headers=s.auth,
    )
    assert batch.status_code in (200, 201, 202), batch.text

    # No worker yet: the scheduler publishes the jobs and the Celery messages wait in Redis.
    wait_until(lambda: redis.Redis.from_url(E2E_REDIS_URL).llen("mmjobs") >= 4, 20, "celery messages in redis")
    queued = redis_dump(E2E_REDIS_URL)

    s.worker = s.start_worker()
    job = s.wait_status(ok, TERMINAL, timeout=60)
    assert job["status"] == "succeeded", job
    wait_until(
        lambda: (
            s.client.get(f"/v1/batches/{batch.json()['id']}", headers=s.auth).json()["processing_status"] == "ended"
        ),
        60,
        "the batch",
    )
    wait_until(lambda: bool(s.client.get("/v1/webhook-deliveries", headers=s.auth).json()["data"]), 20, "deliveries")

    # Answers a client sees: results, errors, listings, deliveries.
    bodies: list[str] = [
        s.client.get(f"/v1/jobs/{ok}", headers=s.auth).text,
        s.client.get("/v1/jobs?limit=200", headers=s.auth).text,
        s.client.get(f"/v1/batches/{batch.json()['id']}/results", headers=s.auth).text,
        s.client.get("/v1/webhook-deliveries", headers=s.auth).text,
        s.client.get("/v1/webhook-endpoints", headers=s.auth).text,
        s.client.get(f"/v1/webhook-endpoints/{endpoint.json()['id']}", headers=s.auth).text,
        s.client.get("/v1/webhook-secret", headers=s.auth).text,
        s.client.get("/v1/limits", headers=s.auth).text,
        s.client.get("/v1/usage", headers=s.auth).text,
        s.client.post("/v1/jobs", json={"model": MINIMAX_KEY, "params": {}}, headers=s.auth).text,
        s.client.get("/v1/jobs", headers={"x-api-key": "mmj_nope"}).text,
    ]
    logs = {p.name: p.log() for p in s.procs}
    columns = database_dump(s.database_url)
    after = redis_dump(E2E_REDIS_URL)

    leaks: list[str] = []
    for what, value in secrets_.items():
        for name, log in logs.items():
            if value in log:
                leaks.append(f"{what} in the log of {name}")
        for (table, column), dumped in columns.items():
            if (
                value in dumped
                and (table, column) not in SECRET_COLUMNS
                and not (what == "tenant secret" and "secret" in column)
            ):
                leaks.append(f"{what} in {table}.{column}")
        if value in queued or value in after:
            leaks.append(f"{what} in a Celery message or Redis value")
        for i, body in enumerate(bodies):
            # The request that echoes the model name is our own input; the key must not be anywhere else.
            if value in body and not (i == 9 and what == "minimax key"):
                leaks.append(f"{what} in API answer #{i}")
    assert not leaks, leaks
    # The scans see what they should: the endpoint secret is where we sign from, the messages were captured.
    assert secrets_["endpoint secret"] in columns[("webhook_endpoints", "secret")]
    assert ok in queued
