"""The baseline: the best plain Celery a competent user would write for these calls, without minimax-jobs.

- **Pool**: Celery's `threads` pool, as many threads per worker process as the workload needs (the scenario's
  `baseline_concurrency`, the same as our threads per worker): the task waits on the network, so threads, not
  processes (a prefork pool of that size would hold one Python process per call in flight).
- **Retries**: a 429, a 5xx (500, 502, 503, 504, 529), a 408, a MiniMax rate-limit code in a 200 body
  (base_resp 1002/1039/1041/2045), an unreadable answer (a connection cut mid-answer) or a transport error are
  retried with `self.retry(countdown=...)`: exponential backoff with full jitter, uniform in
  [0, min(300 s, 1 s x 2^(retries))] (the same policy as ours, workers/retry.py), never shorter than the answer's
  Retry-After; at most 5 attempts in all (ours: `default_max_attempts` 5). Any other status fails the task.
  `self.retry` rather than `autoretry_for` only because autoretry cannot honour Retry-After.
- **Acknowledgement**: `acks_late=True`, `task_reject_on_worker_lost=True`, `worker_prefetch_multiplier=1`, what
  Celery's documentation recommends for long tasks that must not be lost: a worker that dies leaves its tasks on
  the broker (redelivered after the Redis visibility timeout) instead of losing them; and each worker reserves only
  as many tasks as it has threads, so four workers share the queue evenly. The cost (a task may run twice after a
  crash) is the same trade ours makes with leases. No worker dies in these scenarios, so it changes no figure but
  the distribution of tasks across workers.
- **Rate limiting**: the task's `rate_limit` set to the upstream limit divided by the worker count (a TPM limit
  turned into the request rate it allows for the workload's tokens per job). That is all plain Celery offers:
  a per-worker, per-task token bucket in the worker's consumer (not shared between workers, not aware of tokens,
  429s or other clients of the same key).
- **Submission**: the same path as ours. Ours submits a batch (`POST /v1/batches`, chunks of 1,000); the baseline
  publishes every task from one producer on one connection, in one loop (what `group(...).apply_async()` does,
  without building a GroupResult). When ours submits one job per request (`--single-jobs`), the baseline
  publishes one `apply_async` per task, each on a producer taken from the pool, as separate calls would.

Worker processes import this module (`celery -A benchmarks.baseline worker --pool threads`), configured by
environment: `BENCH_BROKER_URL`, `BENCH_SIM_URL`, `BENCH_RATE_LIMIT` (e.g. `150/m`, empty for none). Every
attempt appends a JSON record to `ATTEMPTS_KEY`; the final outcome of each task (succeeded, failed for good, or
failed after the last retry) appends one record (submitted time, first start, end, attempts, outcome, HTTP status)
to `RECORDS_KEY`, from which the runner computes the same figures as for our side.
"""

from __future__ import annotations

import json
import os
import random
import time
from typing import Any

import httpx
import redis
from celery import Celery, Task

from benchmarks.stack import REDIS_URL

QUEUE = "bench_baseline"
TASK = "bench.baseline.call"
RECORDS_KEY = "bench:baseline:records"
ATTEMPTS_KEY = "bench:baseline:attempts"
MAX_ATTEMPTS = 5
BACKOFF_BASE, BACKOFF_CAP = 1.0, 300.0
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 529})
RETRY_BASE_RESP = frozenset({1002, 1039, 1041, 2045})  # MiniMax's rate-limit codes, in a 200 body

# The runner (which publishes) and the workers must agree: the workers get BENCH_BROKER_URL, the runner falls back
# on the benchmarks' Redis (MMJOBS_BENCH_REDIS_SERVER, database 11), never on a fixed server.
BROKER_URL = os.environ.get("BENCH_BROKER_URL") or REDIS_URL
SIM_URL = os.environ.get("BENCH_SIM_URL", "http://127.0.0.1:8090")
RATE_LIMIT = os.environ.get("BENCH_RATE_LIMIT") or None
SIM_KEY = "sk-simulator"

app = Celery("bench_baseline", broker=BROKER_URL)
app.conf.update(
    task_default_queue=QUEUE,
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)

_http: httpx.Client | None = None
_redis: redis.Redis | None = None


def _clients() -> tuple[httpx.Client, redis.Redis]:
    """One HTTP client (its connection pool as large as the threads) and one Redis client per worker process."""
    global _http, _redis
    if _http is None or _redis is None:
        threads = int(os.environ.get("BENCH_THREADS", "100"))
        limits = httpx.Limits(max_connections=threads + 10, max_keepalive_connections=threads + 10)
        _http = httpx.Client(timeout=httpx.Timeout(300.0, connect=10.0), limits=limits)
        _redis = redis.Redis.from_url(BROKER_URL, max_connections=threads + 10)
    return _http, _redis


def backoff(retries: int, retry_after: float | None) -> float:
    """Full jitter: uniform in [0, min(cap, base x 2^retries)], at least the Retry-After asked for."""
    delay = random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**retries))
    return max(delay, retry_after or 0.0)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _attempt(http: httpx.Client, params: dict[str, Any]) -> dict[str, Any]:
    """One upstream call: {"status": succeeded|retry|failed, "http_status", "retry_after", tokens, "error"}."""
    try:
        response = http.post(
            SIM_URL + "/anthropic/v1/messages",
            json={"model": "MiniMax-M2.7", **params},
            headers={"x-api-key": SIM_KEY, "anthropic-version": "2023-06-01"},
        )
    except httpx.HTTPError as exc:
        return {"status": "retry", "http_status": None, "error": type(exc).__name__}
    out: dict[str, Any] = {"http_status": response.status_code}
    if response.status_code != 200:
        retry = response.status_code in RETRY_STATUSES
        return {**out, "status": "retry" if retry else "failed", "retry_after": _retry_after(response)}
    try:
        body = response.json()
    except ValueError:  # the connection was cut mid-answer
        return {**out, "status": "retry", "error": "broken answer"}
    code = int((body.get("base_resp") or {}).get("status_code") or 0)
    if code:
        return {**out, "status": "retry" if code in RETRY_BASE_RESP else "failed", "error": f"base_resp {code}"}
    usage = body.get("usage", {})
    return {
        **out,
        "status": "succeeded",
        "input_tokens": int(usage.get("input_tokens", 0)),
        "output_tokens": int(usage.get("output_tokens", 0)),
    }


@app.task(bind=True, name=TASK, rate_limit=RATE_LIMIT, ignore_result=True, max_retries=MAX_ATTEMPTS - 1)
def call(
    self: Task[Any, Any],
    job_id: str,
    tenant: str,
    submitted: float,
    params: dict[str, Any],
    first_started: float | None = None,
) -> None:
    http, r = _clients()
    started = time.time()
    outcome = _attempt(http, params)
    ended = time.time()
    attempt = {"id": job_id, "number": self.request.retries + 1, "started": started, "ended": ended, **outcome}
    r.rpush(ATTEMPTS_KEY, json.dumps(attempt))
    first = first_started if first_started is not None else started
    if outcome["status"] == "retry" and self.request.retries < MAX_ATTEMPTS - 1:
        countdown = backoff(self.request.retries, outcome.get("retry_after"))
        raise self.retry(args=(job_id, tenant, submitted, params), kwargs={"first_started": first}, countdown=countdown)
    record = {
        "id": job_id,
        "tenant": tenant,
        "submitted": submitted,
        "started": first,
        "ended": ended,
        "attempts": self.request.retries + 1,
        **outcome,
        "status": "succeeded" if outcome["status"] == "succeeded" else "failed",
        "retryable": outcome["status"] == "retry",
    }
    r.rpush(RECORDS_KEY, json.dumps(record))
    if record["status"] != "succeeded":
        raise RuntimeError(f"upstream call failed: {outcome.get('http_status') or outcome.get('error')}")


def submit(jobs: list[tuple[str, str, dict[str, Any]]], *, bulk: bool = True) -> float:
    """Publish (id, tenant, params) tasks from the runner; returns the seconds it took. `bulk`: every task from one
    producer on one connection (the counterpart of our batch; what `group(...).apply_async()` does, without
    building a GroupResult); otherwise one `apply_async` per task, each taking a producer from the pool."""
    t0 = time.monotonic()
    if bulk:
        now = time.time()
        with app.producer_or_acquire() as producer:
            for job_id, tenant, params in jobs:
                call.apply_async(args=(job_id, tenant, now, params), queue=QUEUE, producer=producer)
    else:
        for job_id, tenant, params in jobs:
            call.apply_async(args=(job_id, tenant, time.time(), params), queue=QUEUE)
    return time.monotonic() - t0


def records(r: redis.Redis) -> list[dict[str, Any]]:
    raw: list[bytes] = r.lrange(RECORDS_KEY, 0, -1)  # type: ignore[assignment]
    return [json.loads(item) for item in raw]


def attempts(r: redis.Redis) -> list[dict[str, Any]]:
    raw: list[bytes] = r.lrange(ATTEMPTS_KEY, 0, -1)  # type: ignore[assignment]
    return [json.loads(item) for item in raw]


def record_count(r: redis.Redis) -> int:
    return int(r.llen(RECORDS_KEY))


def attempt_count(r: redis.Redis) -> int:
    return int(r.llen(ATTEMPTS_KEY))
