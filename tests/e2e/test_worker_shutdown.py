"""Graceful worker shutdown through real processes (issue 8): SIGTERM lets calls in flight finish within the
grace period, and hands back at once the ones that would outlast it."""

from __future__ import annotations

import os
import signal

import pytest

from tests.e2e.conftest import TERMINAL, Stack
from tests.procs import Proc

pytestmark = pytest.mark.e2e


def sigterm(proc: Proc, timeout: float) -> int:
    os.killpg(proc.pid, signal.SIGTERM)
    return proc.popen.wait(timeout)


def test_sigterm_lets_the_calls_in_flight_finish(stack: Stack) -> None:
    job_id = stack.submit("finish me first [[sim:latency=3]]")
    stack.wait_status(job_id, {"running"})
    assert sigterm(stack.worker, timeout=20) == 0, stack.worker.log()
    job = stack.job(job_id)
    assert job["status"] == "succeeded", job
    assert [a["classification"] for a in job["attempts"]] == ["succeeded"]
    stack.worker = stack.start_worker()


def test_sigterm_hands_back_calls_that_outlast_the_grace_period(stack: Stack) -> None:
    stack.worker.stop()
    worker = Proc(
        f"worker-short-grace-{len(stack.procs)}",
        ["-m", "service.cli", "worker", "--concurrency", "20"],
        {**stack.env, "MMJOBS_WORKER_SHUTDOWN_GRACE_SECONDS": "1"},
        stack.log_dir,
    )
    stack.procs.append(worker)
    stack.worker = worker
    ids = [stack.submit(f"a long one {i} [[sim:latency=10]]", max_attempts=1) for i in range(3)]
    for job_id in ids:
        stack.wait_status(job_id, {"running"}, timeout=30)

    # Exits long before the 10 s calls could end, and says what it handed back.
    assert sigterm(worker, timeout=8) == 0, worker.log()
    assert "handed back 3 jobs" in worker.log()
    for job_id in ids:
        job = stack.job(job_id)
        assert job["status"] in ("queued", "retrying", "running"), job
        assert job["attempts"][0]["classification"] == "interrupted", job

    # Another worker finishes them; the interrupted attempt did not use up the only attempt allowed.
    stack.worker = stack.start_worker()
    for job_id in ids:
        job = stack.wait_status(job_id, TERMINAL, timeout=40)
        assert job["status"] == "succeeded", job
        assert [a["classification"] for a in job["attempts"]] == ["interrupted", "succeeded"]
