"""The baseline of benchmarks/inflight.py: the plain Celery a competent user would write for many slow calls.

Celery's threads pool with a high concurrency (one thread per call, the only way plain Celery holds thousands of
blocking calls per process), one shared httpx client per process with a connection limit to match, late
acknowledgement with prefetch 1, and retries with exponential backoff and jitter on transport errors, 429 and
5xx (`autoretry_for`, `retry_backoff`). No rate limit: the simulator runs without one here.

Workers import this module (`celery -A benchmarks.inflight_baseline worker --pool threads`), configured by
environment: `BENCH_BROKER_URL`, `BENCH_SIM_URL`, `BENCH_HTTP_CONNECTIONS`. Each task appends one JSON record to
the Redis list `RECORDS_KEY` when it ends (succeeded, or failed after its retries).
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import httpx
import redis
from celery import Celery

QUEUE = "bench_inflight"
TASK = "bench.inflight.call"
RECORDS_KEY = "bench:inflight:records"
MODEL = "MiniMax-M2.7"
SIM_KEY = "sk-simulator"
MAX_RETRIES = 5

BROKER_URL = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/11")
SIM_URL = os.environ.get("BENCH_SIM_URL", "http://127.0.0.1:8090")
HTTP_CONNECTIONS = int(os.environ.get("BENCH_HTTP_CONNECTIONS", "2500"))

app = Celery("bench_inflight", broker=BROKER_URL)
app.conf.update(
    task_default_queue=QUEUE,
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


class RetryableStatus(Exception):
    """429 or 5xx: worth another try after a backoff."""


_lock = threading.Lock()
_http: httpx.Client | None = None
_redis: redis.Redis | None = None


def _clients() -> tuple[httpx.Client, redis.Redis]:
    global _http, _redis
    with _lock:
        if _http is None or _redis is None:
            limits = httpx.Limits(max_connections=HTTP_CONNECTIONS, max_keepalive_connections=HTTP_CONNECTIONS)
            _http = httpx.Client(timeout=httpx.Timeout(300.0, connect=10.0), limits=limits)
            _redis = redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(BROKER_URL, max_connections=64))
        return _http, _redis


@app.task(
    bind=True,
    name=TASK,
    ignore_result=True,
    autoretry_for=(httpx.TransportError, RetryableStatus),
    retry_backoff=1,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=MAX_RETRIES,
)
def call(self: Any, job_id: str, submitted: float, params: dict[str, Any]) -> None:
    http, r = _clients()
    started = time.time()
    tries = self.request.retries + 1
    record: dict[str, Any] = {"id": job_id, "submitted": submitted, "started": started, "tries": tries}
    try:
        response = http.post(
            SIM_URL + "/anthropic/v1/messages",
            json={"model": MODEL, **params},
            headers={"x-api-key": SIM_KEY, "anthropic-version": "2023-06-01"},
        )
    except httpx.TransportError as exc:
        if self.request.retries < MAX_RETRIES:
            raise
        record.update(status="failed", error=type(exc).__name__)
    else:
        record["http_status"] = response.status_code
        if response.status_code == 429 or response.status_code >= 500:
            if self.request.retries < MAX_RETRIES:
                raise RetryableStatus(str(response.status_code))
            record["status"] = "failed"
        else:
            record["status"] = "succeeded" if response.status_code == 200 else "failed"
    record["ended"] = time.time()
    r.rpush(RECORDS_KEY, json.dumps(record))


def submit(count: int, params: dict[str, Any]) -> float:
    """Publish `count` tasks; returns the seconds it took."""
    t0 = time.monotonic()
    with app.producer_or_acquire() as producer:
        for i in range(count):
            call.apply_async(args=(f"j{i}", time.time(), params), queue=QUEUE, producer=producer)
    return time.monotonic() - t0


def records(r: redis.Redis) -> list[dict[str, Any]]:
    raw: list[bytes] = r.lrange(RECORDS_KEY, 0, -1)  # type: ignore[assignment]
    return [json.loads(item) for item in raw]


def record_count(r: redis.Redis) -> int:
    return int(r.llen(RECORDS_KEY))
