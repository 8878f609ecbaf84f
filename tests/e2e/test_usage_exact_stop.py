"""Cancel and deadlines stop the call, and the stopped call is billed (issues 13.3, 13.4, 13.7), end to end with a
worker making plain (non-streamed) calls: the hardest case, since nothing arrives until the answer is whole.

The worker renews its leases only every 300 s here, so a canceled call that stops well before its 60-second
answer was stopped by the cancel notice (service/dispatch.py -> workers/runtime.py), not by lease renewal.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from tests.e2e.conftest import Stack
from tests.procs import wait_until

pytestmark = pytest.mark.e2e

SLOW = " [[sim:latency=60]] [[sim:output_tokens=400]]"
BOUND = 30.0  # well under the 60-second answer and the 300-second lease renewal


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with tempfile.TemporaryDirectory(prefix="mmjobs-e2e-stop-") as tmp:
        s = Stack(Path(tmp))
        try:
            s.env.update(
                {
                    "MMJOBS_STREAM": "false",
                    "MMJOBS_LEASE_SECONDS": "600",
                    "MMJOBS_LEASE_REFRESH_SECONDS": "300",
                    "MMJOBS_MAX_CALL_SECONDS": "6",
                }
            )
            s.worker.stop()
            s.worker = s.start_worker()
            yield s
        finally:
            s.close()


def _billed(stack: Stack) -> list[dict[str, Any]]:
    return list(httpx.get(stack.sim_url + "/_sim/ledger", timeout=5).json()["entries"])


def _closed_calls(stack: Stack) -> list[dict[str, Any]]:
    return [e for e in _billed(stack) if e["outcome"] == "client_disconnected"]


def _in_flight(stack: Stack) -> int:
    return int(httpx.get(stack.sim_url + "/_sim/stats", timeout=5).json()["in_flight"])


def test_a_canceled_plain_call_is_closed_at_once_and_billed(stack: Stack) -> None:
    httpx.post(stack.sim_url + "/_sim/reset", timeout=5).raise_for_status()
    job_id = stack.submit("Stop me" + SLOW)
    stack.wait_status(job_id, {"running"})
    wait_until(lambda: _in_flight(stack) == 1, BOUND, "the call to reach the simulator")

    r = stack.client.post(f"/v1/jobs/{job_id}/cancel", headers=stack.auth)
    assert r.json()["status"] == "canceled"

    # The simulator sees the connection close long before its answer was due: MiniMax stops generating.
    wait_until(lambda: len(_closed_calls(stack)) == 1, BOUND, "the upstream call to be closed")
    assert _in_flight(stack) == 0
    wait_until(lambda: stack.job(job_id)["attempts"][0]["ended_at"] is not None, BOUND, "the attempt to end")
    job = stack.job(job_id)
    assert job["status"] == "canceled"
    assert job["attempts"][0]["classification"] == "canceled"
    [entry] = _closed_calls(stack)
    # Billed the prompt (the intake estimate, never under the upstream's count), not zero.
    assert job["usage"]["input_tokens"] >= entry["input_tokens"] > 0
    usage = stack.client.get("/v1/usage", headers=stack.auth).json()["total"]
    assert usage["estimated"]["attempts"] >= 1


def test_a_call_longer_than_max_call_seconds_is_stopped_failed_and_billed(stack: Stack) -> None:
    httpx.post(stack.sim_url + "/_sim/reset", timeout=5).raise_for_status()
    job_id = stack.submit("Too long" + SLOW)

    job = stack.wait_status(job_id, {"succeeded", "failed", "canceled", "expired"}, timeout=BOUND)

    assert job["status"] == "failed"
    assert job["error"]["type"] == "call_too_long"
    assert "MMJOBS_MAX_CALL_SECONDS (6 s)" in job["error"]["message"]
    assert [a["classification"] for a in job["attempts"]] == ["permanent"]  # not retried
    [entry] = _closed_calls(stack)
    assert job["usage"]["input_tokens"] >= entry["input_tokens"] > 0


def test_a_call_running_past_its_jobs_expires_at_is_stopped_and_the_job_expires(stack: Stack) -> None:
    httpx.post(stack.sim_url + "/_sim/reset", timeout=5).raise_for_status()
    # Jobs admitted by this API expire 3 s after they are created, sooner than the longest call allowed (6 s).
    with TestClient(create_app(stack.settings.model_copy(update={"job_expiry_seconds": 3}))) as short:
        r = short.post(
            "/v1/jobs",
            json={"model": "MiniMax-M2.7", "params": {"max_tokens": 400, "messages": [
                {"role": "user", "content": "Expire me" + SLOW}]}},
            headers=stack.auth,
        )  # fmt: skip
        assert r.status_code == 202, r.text
    job_id = r.json()["id"]

    job = stack.wait_status(job_id, {"succeeded", "failed", "canceled", "expired"}, timeout=BOUND)

    assert job["status"] == "expired"
    assert job["error"]["type"] == "expired"
    assert "expires_at" in job["error"]["message"]
    [attempt] = job["attempts"]
    assert attempt["classification"] == "expired"
    [entry] = _closed_calls(stack)
    assert job["usage"]["input_tokens"] >= entry["input_tokens"] > 0
