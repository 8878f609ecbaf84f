"""Retries through real processes: transient faults are retried to success, permanent ones fail at once, and a job
out of attempts fails saying so."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.conftest import TERMINAL, Stack
from tests.procs import wait_http, wait_until

pytestmark = pytest.mark.e2e


def test_a_job_that_always_fails_transiently_gives_up_after_max_attempts(stack: Stack) -> None:
    job_id = stack.submit("always broken [[sim:fault=500]]", max_attempts=3)
    job = stack.wait_status(job_id, TERMINAL, timeout=60)
    assert job["status"] == "failed"
    assert [a["classification"] for a in job["attempts"]] == ["retryable"] * 3
    assert [a["http_status"] for a in job["attempts"]] == [500] * 3
    assert "gave up after 3 attempts" in job["error"]["retry"]


def test_random_faults_are_retried_until_every_job_succeeds(stack: Stack) -> None:
    faults = "429=0.1,500=0.1,529=0.1,midstream=0.1"
    httpx.post(stack.sim_url + "/_sim/config", json={"faults": faults}, timeout=5).raise_for_status()
    try:
        ids = [stack.submit(f"fault tolerant {i}", max_attempts=10) for i in range(30)]
        jobs: dict[str, dict[str, object]] = {}

        def all_done() -> bool:
            for job_id in ids:
                if job_id not in jobs:
                    job = stack.job(job_id)
                    if job["status"] in TERMINAL:
                        jobs[job_id] = job
            return len(jobs) == len(ids)

        wait_until(all_done, 90, "every job to finish", interval=0.3)
    finally:
        httpx.post(stack.sim_url + "/_sim/config", json={"faults": ""}, timeout=5).raise_for_status()
    statuses = {j["status"] for j in jobs.values()}
    assert statuses == {"succeeded"}, statuses
    retried = [j for j in jobs.values() if len(j["attempts"]) > 1]  # type: ignore[arg-type]
    assert retried, "with 40 % faults some job must have needed a retry"
    for job in retried:
        attempts = job["attempts"]
        assert isinstance(attempts, list)
        assert all(a["classification"] in ("retryable", "rate_limited") for a in attempts[:-1])
        assert attempts[-1]["classification"] == "succeeded"


def test_a_job_waits_out_minimax_being_unreachable_without_using_up_its_attempts(stack: Stack) -> None:
    stack.simulator.stop()
    try:
        job_id = stack.submit("patience", max_attempts=1)
        wait_until(lambda: len(stack.job(job_id)["attempts"]) >= 3, 30, "three tries against the closed port")
        job = stack.job(job_id)
        assert job["status"] in ("retrying", "queued", "running"), job
        assert {a["error_type"] for a in job["attempts"] if a["ended_at"]} <= {"connection_error", "connect_timeout"}
    finally:
        port = stack.sim_url.rsplit(":", 1)[1]
        argv = ["-m", "service.cli", "simulator", "--port", port, "--latency", "0.2"]
        stack.simulator = stack.start("simulator", argv)
        wait_http(stack.sim_url + "/healthz", stack.simulator)
    job = stack.wait_status(job_id, TERMINAL, timeout=60)
    assert job["status"] == "succeeded", job
    assert job["attempts"][-1]["classification"] == "succeeded"
