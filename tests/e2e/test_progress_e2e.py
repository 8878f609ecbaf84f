"""Progress while work runs (issue 16 point 7), through real processes: a job's `output_tokens_so_far` while its
call streams, and `batch.progress` events while a batch runs.

The worker here renews leases every 30 s, as a production worker might (the default is 10 s), so a call of a few
seconds ends between two renewals: progress must be written on its own, more often.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from tests.e2e.conftest import Stack
from tests.e2e.test_webhooks_e2e import Receiver
from tests.procs import Proc, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def slow_renewing_worker(stack: Stack) -> Proc:
    stack.worker.stop()
    worker = Proc(
        "worker-slow-renewal",
        ["-m", "service.cli", "worker", "--concurrency", "20"],
        {**stack.env, "MMJOBS_LEASE_SECONDS": "90", "MMJOBS_LEASE_REFRESH_SECONDS": "30"},
        stack.log_dir,
    )
    stack.procs.append(worker)
    wait_until(lambda: b"ready" in worker.log_path.read_bytes() or not worker.alive(), 60, "the worker")
    assert worker.alive(), worker.log()
    return worker


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


def test_output_tokens_so_far_grows_during_a_slow_streamed_call(stack: Stack, slow_renewing_worker: Proc) -> None:
    # 250 tokens streamed evenly over 8 s.
    job_id = stack.submit("a slow answer [[sim:latency=8]] [[sim:output_tokens=250]]")
    seen: list[tuple[str, int]] = []

    def counting() -> bool:
        job = stack.job(job_id)
        seen.append((job["status"], job["progress"]["output_tokens_so_far"]))
        assert job["status"] in ("queued", "running"), f"the call ended and progress never showed: {seen}"
        return bool(job["status"] == "running" and job["progress"]["output_tokens_so_far"] > 0)

    wait_until(counting, 60, "output_tokens_so_far above 0 while the call runs")
    first = seen[-1][1]
    assert 0 < first < 250
    # It keeps moving while the call streams.
    wait_until(
        lambda: stack.job(job_id)["progress"]["output_tokens_so_far"] > first, 30, "output_tokens_so_far to grow"
    )
    done = stack.wait_status(job_id, {"succeeded"}, timeout=60)
    assert done["usage"]["output_tokens"] == 250


def test_batch_progress_events_while_the_batch_runs(
    stack: Stack, slow_renewing_worker: Proc, receiver: Receiver
) -> None:
    r = stack.client.post(
        "/v1/webhook-endpoints",
        json={"url": receiver.url, "event_types": ["batch.progress", "batch.ended"]},
        headers=stack.auth,
    )
    assert r.status_code == 201, r.text
    secret = r.json()["secret"]
    total = 40
    requests = [
        {"custom_id": f"r{i}", "model": "MiniMax-M2.7",
         "params": {"max_tokens": 32, "messages": [{"role": "user", "content": f"part {i} [[sim:latency=1]]"}]}}
        for i in range(total)
    ]  # fmt: skip
    r = stack.client.post("/v1/batches", json={"requests": requests}, headers=stack.auth)
    assert r.status_code == 202, r.text
    batch_id = r.json()["id"]
    created_at = datetime.fromisoformat(r.json()["created_at"])

    def mine() -> list[dict[str, Any]]:
        return [e for e in receiver.events(secret) if e["data"]["id"] == batch_id]

    wait_until(lambda: any(e["type"] == "batch.ended" for e in mine()), 120, "batch.ended")
    progress = sorted((e for e in mine() if e["type"] == "batch.progress"), key=lambda e: e["created_at"])
    assert progress, "no batch.progress event while 40 requests ran"
    previous_done, previous_at = 0, created_at
    for event in progress:
        counts = event["data"]["request_counts"]
        assert event["data"]["processing_status"] == "in_progress"
        assert sum(counts.values()) == total
        done = total - counts["processing"]
        assert 0 < done < total
        at = datetime.fromisoformat(event["created_at"].replace("Z", "+00:00"))
        # Throttled: a tenth of the batch more than the last event, or 5 s after it.
        assert done - previous_done >= total // 10 or (at - previous_at).total_seconds() >= 5, [
            (e["created_at"], e["data"]["request_counts"]) for e in progress
        ]
        previous_done, previous_at = done, at
