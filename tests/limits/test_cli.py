"""The operator's commands, each in its own process on a database of its own: `mmjobs tenants limits` overrides
show in GET /v1/limits (and `default` gives the operator's setting back), `mmjobs tenants disable/enable`, and
`mmjobs keys revoke` naming the schedules it paused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.config import Settings
from tests.conftest import TEST_REDIS_URL
from tests.db import drop_database, fresh_database
from tests.procs import ROOT

NAME = f"mmjobs_limits_cli_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    url = fresh_database(NAME)
    try:
        yield url
    finally:
        drop_database(NAME)


def mmjobs(database: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MMJOBS_DATABASE_URL": database, "MMJOBS_REDIS_URL": TEST_REDIS_URL, "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    if ok:
        assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def client(database: str) -> Iterator[TestClient]:
    settings = Settings(database_url=database, redis_url=TEST_REDIS_URL, max_queued_jobs=500, max_schedules=50)
    with TestClient(create_app(settings)) as c:
        yield c


def limits(client: TestClient, secret: str) -> dict[str, Any]:
    r = client.get("/v1/limits", headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 200, r.text
    return dict(r.json()["intake"])


def test_overrides_set_by_the_cli_show_in_v1_limits(database: str, client: TestClient) -> None:
    secret = mmjobs(database, "keys", "create", "--tenant", "globex").stdout.strip().splitlines()[-1]
    before = limits(client, secret)
    assert before["max_queued_jobs"] == {"limit": 500, "source": "default", "used": 0}

    done = mmjobs(database, "tenants", "limits", "globex", "--requests-per-minute", "90", "--max-queued-jobs", "5",
                  "--max-active-batches", "2", "--max-schedules", "unlimited",
                  "--max-file-bytes", "1_000_000")  # fmt: skip
    assert "max_queued_jobs: 5 (tenant override)" in done.stdout
    assert "max_schedules: unlimited (tenant override)" in done.stdout
    after = limits(client, secret)
    assert after["requests_per_minute"] == {"limit": 90, "source": "tenant", "used": None}
    assert after["max_queued_jobs"] == {"limit": 5, "source": "tenant", "used": 0}
    assert after["max_active_batches"] == {"limit": 2, "source": "tenant", "used": 0}
    assert after["max_schedules"] == {"limit": None, "source": "tenant", "used": 0}
    assert after["max_stored_file_bytes"] == {"limit": 1_000_000, "source": "tenant", "used": 0}
    assert after["key_requests_per_minute"]["source"] == "default"
    # The tenant's own rate now shows in the RateLimit-Policy of its responses: 90 a minute, 15 at once in 10 s.
    r = client.get("/v1/jobs", headers={"Authorization": f"Bearer {secret}"})
    assert '"tenant";q=15;w=10' in r.headers["ratelimit-policy"]

    as_json = json.loads(
        mmjobs(database, "tenants", "limits", "globex", "--max-queued-jobs", "default", "--json").stdout
    )
    # The operator's default again (the CLI shows its own environment's MMJOBS_MAX_QUEUED_JOBS: unset here).
    assert as_json["intake"]["max_queued_jobs"] == {"limit": 1_000_000, "source": "default"}
    assert limits(client, secret)["max_queued_jobs"]["source"] == "default"

    bad = mmjobs(database, "tenants", "limits", "globex", "--max-schedules", "lots", ok=False)
    assert bad.returncode == 1
    assert "--max-schedules: give a number, `default` or `unlimited`" in bad.stderr


def test_disable_enable_and_revoke_from_the_cli(database: str, client: TestClient) -> None:
    out = mmjobs(database, "keys", "create", "--tenant", "initech").stdout.strip().splitlines()
    secret, key_id = out[-1], out[0].split()[2]
    auth = {"Authorization": f"Bearer {secret}"}
    job = {"model": "MiniMax-M2.7", "params": {"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}}
    schedule = client.post(
        "/v1/schedules", json={"name": "n", "cron": "@hourly", "template": {"job": job}}, headers=auth
    )
    assert schedule.status_code == 201, schedule.text

    assert "disabled initech" in mmjobs(database, "tenants", "disable", "initech").stdout
    refused = client.post("/v1/jobs", json=job, headers=auth)
    assert refused.status_code == 403
    assert refused.json()["error"]["type"] == "tenant_disabled"
    assert "disabled since" in mmjobs(database, "tenants", "limits", "initech").stdout
    assert "enabled initech" in mmjobs(database, "tenants", "enable", "initech").stdout
    assert client.post("/v1/jobs", json=job, headers=auth).status_code == 202

    revoked = mmjobs(database, "keys", "revoke", key_id).stdout
    assert f"revoked {key_id}" in revoked
    assert f"paused its schedules: {schedule.json()['id']}" in revoked
    assert client.get("/v1/jobs", headers=auth).status_code == 401
    assert mmjobs(database, "tenants", "disable", "nobody", ok=False).returncode == 1
