"""Batches through real processes: a big batch does not starve another tenant's job, and counts agree with the
results file whatever the outcomes."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import func, select, update

from service.db import transaction, utcnow
from service.models import Job
from service.tenants import service as tenants
from tests.e2e.conftest import TERMINAL, Stack
from tests.procs import wait_until

pytestmark = pytest.mark.e2e


def requests(n: int, text: str = "doc", extra: str = "") -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"{text}-{i}",
            "model": "MiniMax-M2.7",
            "params": {"max_tokens": 64, "messages": [{"role": "user", "content": f"{text} {i} {extra}"}]},
        }
        for i in range(n)
    ]


def batch(stack: Stack, bid: str) -> dict[str, Any]:
    r = stack.client.get(f"/v1/batches/{bid}", headers=stack.auth)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_a_big_batch_does_not_starve_another_tenants_job(stack: Stack) -> None:
    r = stack.client.post("/v1/batches", json={"requests": requests(2000, "bulk")}, headers=stack.auth)
    assert r.status_code == 202, r.text
    bid = r.json()["id"]
    with transaction(stack.session_factory) as session:
        other_key = tenants.create_key(session, tenant_name="small-tenant").secret
    other = {"Authorization": f"Bearer {other_key}"}
    wait_until(lambda: batch(stack, bid)["request_counts"]["succeeded"] >= 20, 30, "the batch to get going")
    job_id = stack.client.post(
        "/v1/jobs",
        json={"model": "MiniMax-M2.7", "params": {"max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}},
        headers=other,
    ).json()["id"]
    job: dict[str, Any] = {}

    def single_done() -> bool:
        job.update(stack.client.get(f"/v1/jobs/{job_id}", headers=other).json())
        return job["status"] in TERMINAL

    wait_until(single_done, 60, "the single job")
    assert job["status"] == "succeeded"
    with stack.session_factory() as session:
        done_before = session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.batch_id == bid, Job.finished_at < datetime.fromisoformat(job["finished_at"]))
        )
    assert done_before is not None
    assert done_before < 500, f"{done_before} of 2000 batch requests finished before the single job"
    # Let the batch drain so later tests start from a quiet stack.
    stack.client.post(f"/v1/batches/{bid}/cancel", headers=stack.auth)
    wait_until(lambda: batch(stack, bid)["processing_status"] == "ended", 60, "the canceled batch to end")


def test_counts_agree_with_the_results_file(stack: Stack) -> None:
    reqs = requests(6, "ok") + requests(2, "bad", "[[sim:error=2013]]") + requests(4, "slow", "[[sim:latency=30]]")
    bid = stack.client.post("/v1/batches", json={"requests": reqs}, headers=stack.auth).json()["id"]
    wait_until(lambda: batch(stack, bid)["request_counts"]["succeeded"] == 6, 30, "the quick requests")
    wait_until(lambda: batch(stack, bid)["request_counts"]["errored"] == 2, 30, "the failing requests")
    # Time passes for the slow ones: their batch's deadline is moved into the past while two still wait.
    with transaction(stack.session_factory) as session:
        session.execute(
            update(Job)
            .where(Job.batch_id == bid, Job.custom_id.in_(["slow-2", "slow-3"]), Job.status != "running")
            .values(expires_at=utcnow())
        )
    stack.client.post(f"/v1/batches/{bid}/cancel", headers=stack.auth)
    final: dict[str, Any] = {}

    def ended() -> bool:
        final.update(batch(stack, bid))
        return bool(final["processing_status"] == "ended")

    wait_until(ended, 60, "the batch to end")
    counts = final["request_counts"]
    assert counts["processing"] == 0
    assert sum(counts.values()) == 12
    assert counts["succeeded"] >= 6
    assert counts["errored"] == 2
    lines = [
        json.loads(x) for x in stack.client.get(f"/v1/batches/{bid}/results", headers=stack.auth).text.splitlines()
    ]
    assert len(lines) == 12
    by_type: dict[str, int] = {}
    for line in lines:
        by_type[line["result"]["type"]] = by_type.get(line["result"]["type"], 0) + 1
    assert by_type == {k: v for k, v in counts.items() if k != "processing" and v}
    ok = next(x for x in lines if x["custom_id"] == "ok-0")
    assert "SIM:" in ok["result"]["message"]["content"][-1]["text"]
    bad = next(x for x in lines if x["custom_id"] == "bad-0")
    assert "(2013)" in bad["result"]["error"]["message"]
