"""The API process remembers verified keys (service/tenants/keycache.py), yet a key revoked, a tenant disabled or
enabled by another process (the CLI) is honoured by the very next request; and when that process cannot reach
Redis to say so, the API still honours it within the cache's bound."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import select

from service.db import make_engine
from service.models import ApiKey
from service.tenants.keycache import CACHE_SECONDS
from tests.db import fresh_database, redis_url
from tests.procs import ROOT, Proc, free_port, wait_http, wait_until

JOB = {"model": "MiniMax-M2.7", "params": {"max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}}


@dataclass(frozen=True)
class Api:
    url: str
    env: dict[str, str]
    database_url: str


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    database_url = fresh_database("mmjobs_key_cache")
    env = {"MMJOBS_DATABASE_URL": database_url, "MMJOBS_REDIS_URL": redis_url(7)}
    port = free_port()
    proc = Proc("api", ["-m", "service.cli", "api", "--port", str(port)], env, tmp_path_factory.mktemp("keycache"))
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        yield Api(f"http://127.0.0.1:{port}", env, database_url)
    finally:
        proc.stop()


def cli(api: Api, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        env={**os.environ, **api.env, **(env or {})},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def new_key(api: Api, tenant: str) -> tuple[str, str]:
    """(secret, key id) of a new key of `tenant`, made by another process."""
    secret = cli(api, "keys", "create", "--tenant", tenant).strip().splitlines()[-1]
    engine = make_engine(api.database_url)
    try:
        with engine.connect() as conn:
            key_id = conn.execute(select(ApiKey.id).where(ApiKey.prefix == secret[:12])).scalar_one()
    finally:
        engine.dispose()
    return secret, key_id


def submit(api: Api, secret: str) -> httpx.Response:
    return httpx.post(f"{api.url}/v1/jobs", json=JOB, headers={"Authorization": f"Bearer {secret}"}, timeout=10)


def test_a_key_revoked_by_another_process_is_refused_by_the_next_request(api: Api) -> None:
    secret, key_id = new_key(api, "rev")
    for _ in range(3):  # verified once, then served from the API's cache
        assert submit(api, secret).status_code == 202
    cli(api, "keys", "revoke", key_id)
    r = submit(api, secret)
    assert r.status_code == 401, r.text
    assert "revoked" in r.json()["error"]["message"]


def test_a_tenant_disabled_and_enabled_by_another_process_is_honoured_at_once(api: Api) -> None:
    secret, _ = new_key(api, "dis")
    assert submit(api, secret).status_code == 202
    assert submit(api, secret).status_code == 202
    cli(api, "tenants", "disable", "dis")
    r = submit(api, secret)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["type"] == "tenant_disabled"
    cli(api, "tenants", "enable", "dis")
    assert submit(api, secret).status_code == 202


def test_a_budget_set_by_another_process_holds_from_the_next_submission(api: Api) -> None:
    """The cache remembers that the tenant has no budget, so its submissions skip the budget queries; the first
    budget written elsewhere must end that at once, not CACHE_SECONDS later."""
    secret, _ = new_key(api, "thrifty")
    for _ in range(3):  # the tenant is known to have no budget from the first request on
        assert submit(api, secret).status_code == 202
    cli(api, "budgets", "set", "--tenant", "thrifty", "--limit", "0", "--period", "total")
    r = submit(api, secret)
    assert r.status_code == 402, r.text
    assert r.json()["error"]["type"] == "budget_exceeded"


def test_a_revocation_that_could_not_reach_redis_is_honoured_within_the_bound(api: Api) -> None:
    secret, key_id = new_key(api, "blind")
    assert submit(api, secret).status_code == 202
    assert submit(api, secret).status_code == 202
    # The revoking process cannot tell the API processes (its Redis is unreachable): only the bound is left. Every
    # API process (one per CPU) loaded its entry before the revocation, so once the bound has passed, all refuse.
    revoked = time.monotonic()
    cli(api, "keys", "revoke", key_id, env={"MMJOBS_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    wait_until(lambda: submit(api, secret).status_code == 401, 4 * CACHE_SECONDS, "the revoked key to answer 401")
    time.sleep(max(0.0, revoked + CACHE_SECONDS + 0.5 - time.monotonic()))
    assert [submit(api, secret).status_code for _ in range(8)] == [401] * 8
