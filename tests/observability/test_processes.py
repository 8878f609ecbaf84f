"""The real processes: a worker's JSON log lines carry the job's ids, the worker serves its own metrics, and the
API's /metrics shows what the worker and the scheduler did (read from Postgres and Redis, not from memory)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Stack
from tests.observability.conftest import parse, value
from tests.procs import free_port, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack_with_metrics() -> Iterator[tuple[Stack, int]]:
    port = free_port()
    with pytest.MonkeyPatch.context() as mp, tempfile.TemporaryDirectory(prefix="mmjobs-obs-") as tmp:
        mp.setenv("MMJOBS_WORKER_METRICS_PORT", str(port))
        mp.setenv("MMJOBS_LOG_FORMAT", "json")
        stack = Stack(Path(tmp))
        try:
            yield stack, port
        finally:
            stack.close()


def json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_worker_logs_metrics_and_api_metrics(stack_with_metrics: tuple[Stack, int]) -> None:
    stack, port = stack_with_metrics
    job_id = stack.submit("observability")
    stack.wait_status(job_id, {"succeeded"})

    # The worker's lines are JSON, and the attempt's outcome line names the job, tenant and attempt.
    lines = json_lines(stack.worker.log())
    assert lines, stack.worker.log()[-2000:]
    outcome = [line for line in lines if line.get("job_id") == job_id and "attempt 1: succeeded" in line["event"]]
    assert outcome, stack.logs()
    assert outcome[0]["attempt"] == 1
    assert outcome[0]["tenant"].startswith("ten")
    assert json_lines(stack.scheduler.log()), stack.scheduler.log()[-2000:]  # the scheduler logs JSON too

    worker = parse(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
    labels = {"model": "MiniMax-M2.7", "format": "anthropic", "classification": "succeeded"}
    assert value(worker, "mmjobs_upstream_call_duration_seconds_count", **labels) >= 1
    assert ("mmjobs_worker_calls_in_flight", frozenset()) in worker

    def api_metrics() -> dict[Any, float]:
        r = stack.client.get("/metrics")
        assert r.status_code == 200
        return parse(r.text)

    seen: dict[Any, float] = {}

    def scheduler_published() -> bool:
        seen.update(api_metrics())
        return value(seen, "mmjobs_scheduler_up") == 1

    try:
        wait_until(scheduler_published, 30, "the scheduler's status document")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; /metrics showed {seen}\n{stack.logs()}") from None
    assert value(seen, "mmjobs_attempts_total", classification="succeeded") >= 1
    assert value(seen, "mmjobs_jobs_finished_total", status="succeeded", model="MiniMax-M2.7") >= 1
    assert value(seen, "mmjobs_tokens_total", model="MiniMax-M2.7", kind="output") > 0
    assert value(seen, "mmjobs_cost_usd_total", model="MiniMax-M2.7") > 0
    assert value(seen, "mmjobs_limiter_effective_rpm", model="MiniMax-M2.7") > 0
