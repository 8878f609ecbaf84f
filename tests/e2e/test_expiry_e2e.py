"""Expiry through real code, end to end (issue 13 point 8): requests that wait past their deadline with no cancel
become `expired`, and the user sees it everywhere they look.

The tenant may start one call a minute (its own RPM cap), so in a batch with a one-minute completion window (the
shortest there is) the first request runs and the second waits until the batch's `expires_at` passes; a single
job submitted meanwhile (the API here gives single jobs 5 s) waits too and expires first. Real scheduler, worker
and simulator processes; the API commits for real.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from service.api.app import create_app
from service.db import transaction
from service.models import Tenant
from service.tenants import service as tenants
from tests.e2e.conftest import Stack
from tests.e2e.test_webhooks_e2e import Receiver
from tests.procs import wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


def _request(custom_id: str, text: str) -> dict[str, object]:
    return {
        "custom_id": custom_id,
        "model": "MiniMax-M2.7",
        "params": {"max_tokens": 32, "messages": [{"role": "user", "content": text}]},
    }


def test_waiting_requests_expire_with_counts_results_and_events(stack: Stack, receiver: Receiver) -> None:
    with transaction(stack.session_factory) as session:
        new = tenants.create_key(session, tenant_name="one-a-minute")
        session.flush()
        session.execute(update(Tenant).where(Tenant.id == new.key.tenant_id).values(rpm_limit=1))
    auth = {"Authorization": f"Bearer {new.secret}"}
    settings = stack.settings.model_copy(update={"job_expiry_seconds": 5})
    with TestClient(create_app(settings)) as client:
        r = client.post("/v1/webhook-secret", headers=auth)
        assert r.status_code in (200, 201), r.text
        secret = r.json()["secret"]

        r = client.post(
            "/v1/batches",
            json={
                "completion_window": "1m",
                "webhook_url": receiver.url,
                "requests": [_request("first", "runs at once"), _request("second", "waits for the next minute")],
            },
            headers=auth,
        )
        assert r.status_code == 202, r.text
        batch = r.json()
        expires_at = datetime.fromisoformat(batch["expires_at"])
        created_at = datetime.fromisoformat(batch["created_at"])
        assert (expires_at - created_at).total_seconds() == pytest.approx(60, abs=1)

        def batch_now() -> dict[str, Any]:
            got = client.get(f"/v1/batches/{batch['id']}", headers=auth)
            assert got.status_code == 200, got.text
            return dict(got.json())

        # The first request takes the tenant's one call of the minute.
        wait_until(lambda: batch_now()["request_counts"]["succeeded"] == 1, 30, "the first request")

        # A single job now waits behind the tenant's limit, and its 5 s pass first.
        r = client.post(
            "/v1/jobs",
            json={"model": "MiniMax-M2.7", "webhook_url": receiver.url, "params": _request("x", "single")["params"]},
            headers=auth,
        )
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]

        def job_now() -> dict[str, Any]:
            got = client.get(f"/v1/jobs/{job_id}", headers=auth)
            assert got.status_code == 200, got.text
            return dict(got.json())

        wait_until(lambda: job_now()["status"] not in ("queued", "retrying", "running"), 30, "the single job")
        job: dict[str, Any] = job_now()
        assert job["status"] == "expired", job
        assert job["attempts"] == []  # it never ran
        assert job["error"]["type"] == "expired"

        # The batch's second request waits until the batch's deadline, then expires; the batch ends.
        wait_until(lambda: batch_now()["processing_status"] == "ended", 90, "the batch to end")
        ended = batch_now()
        assert ended["request_counts"] == {"processing": 0, "succeeded": 1, "errored": 0, "canceled": 0, "expired": 1}
        assert datetime.fromisoformat(str(ended["ended_at"])) >= expires_at

        results = client.get(f"/v1/batches/{batch['id']}/results", headers=auth)
        assert results.status_code == 200, results.text
        lines = {line["custom_id"]: line for line in map(json.loads, results.text.splitlines())}
        assert lines["first"]["result"]["type"] == "succeeded"
        assert lines["second"]["result"] == {"type": "expired"}

        expired_only = client.get(f"/v1/batches/{batch['id']}/results", params={"status": "expired"}, headers=auth)
        assert [json.loads(line)["custom_id"] for line in expired_only.text.splitlines()] == ["second"]

    # The events, signed: job.expired for the single job, batch.ended with the counts for the batch.
    def types() -> set[str]:
        return {e["type"] for e in receiver.events(secret)}

    wait_until(lambda: {"job.expired", "batch.ended"} <= types(), 30, "job.expired and batch.ended deliveries")
    events = {e["type"]: e for e in receiver.events(secret)}
    assert events["job.expired"]["data"]["id"] == job_id
    assert events["job.expired"]["data"]["status"] == "expired"
    assert events["job.expired"]["data"]["error"]["type"] == "expired"
    assert events["batch.ended"]["data"]["id"] == batch["id"]
    assert events["batch.ended"]["data"]["request_counts"]["expired"] == 1
    assert events["batch.ended"]["data"]["request_counts"]["succeeded"] == 1
