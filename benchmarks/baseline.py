"""The baseline: what people do today. A plain Celery app, prefork pool (one upstream call per process), a task
that makes one httpx call to the simulator's Anthropic endpoint, and the task's `rate_limit` set to the upstream
limit divided by the worker count. No retries beyond Celery's defaults (none): a 429 or a 5xx fails the task.

Worker processes import this module (`celery -A benchmarks.baseline worker`), configured by environment:
`BENCH_BROKER_URL`, `BENCH_SIM_URL`, `BENCH_RATE_LIMIT` (e.g. `150/m`, empty for none). Every task appends one
JSON record (submitted/started/ended wall-clock times, outcome, HTTP status, tokens) to the Redis list
`RECORDS_KEY`, from which the runner computes the same figures as for our side.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import httpx
import redis
from celery import Celery

QUEUE = "bench_baseline"
TASK = "bench.baseline.call"
RECORDS_KEY = "bench:baseline:records"

BROKER_URL = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/11")
SIM_URL = os.environ.get("BENCH_SIM_URL", "http://127.0.0.1:8090")
RATE_LIMIT = os.environ.get("BENCH_RATE_LIMIT") or None
SIM_KEY = "sk-simulator"

app = Celery("bench_baseline", broker=BROKER_URL)
app.conf.update(
    task_default_queue=QUEUE,
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)

_http: httpx.Client | None = None
_redis: redis.Redis | None = None


def _clients() -> tuple[httpx.Client, redis.Redis]:
    """One client of each per pool process, made after the fork."""
    global _http, _redis
    if _http is None or _redis is None:
        _http = httpx.Client(timeout=httpx.Timeout(300.0, connect=10.0))
        _redis = redis.Redis.from_url(BROKER_URL)
    return _http, _redis


def _record(r: redis.Redis, record: dict[str, Any]) -> None:
    r.rpush(RECORDS_KEY, json.dumps(record))


@app.task(name=TASK, rate_limit=RATE_LIMIT, ignore_result=True)
def call(job_id: str, tenant: str, submitted: float, params: dict[str, Any]) -> None:
    http, r = _clients()
    started = time.time()
    record: dict[str, Any] = {"id": job_id, "tenant": tenant, "submitted": submitted, "started": started}
    try:
        response = http.post(
            SIM_URL + "/anthropic/v1/messages",
            json={"model": "MiniMax-M2.7", **params},
            headers={"x-api-key": SIM_KEY, "anthropic-version": "2023-06-01"},
        )
        record["http_status"] = response.status_code
        if response.status_code == 200:
            usage = response.json().get("usage", {})
            record["status"] = "succeeded"
            record["input_tokens"] = int(usage.get("input_tokens", 0))
            record["output_tokens"] = int(usage.get("output_tokens", 0))
        else:
            record["status"] = "failed"
    except (httpx.HTTPError, ValueError) as exc:
        record["status"] = "failed"
        record["http_status"] = None
        record["error"] = type(exc).__name__
    record["ended"] = time.time()
    _record(r, record)
    if record["status"] != "succeeded":
        # Plain Celery: the task fails, nothing retries it.
        raise RuntimeError(f"upstream call failed: {record.get('http_status') or record.get('error')}")


def submit(jobs: list[tuple[str, str, dict[str, Any]]]) -> float:
    """Publish (id, tenant, params) tasks from the runner; returns the seconds it took."""
    t0 = time.monotonic()
    with app.producer_or_acquire() as producer:
        for job_id, tenant, params in jobs:
            call.apply_async(args=(job_id, tenant, time.time(), params), queue=QUEUE, producer=producer)
    return time.monotonic() - t0


def records(r: redis.Redis) -> list[dict[str, Any]]:
    raw: list[bytes] = r.lrange(RECORDS_KEY, 0, -1)  # type: ignore[assignment]
    return [json.loads(item) for item in raw]


def record_count(r: redis.Redis) -> int:
    return int(r.llen(RECORDS_KEY))
