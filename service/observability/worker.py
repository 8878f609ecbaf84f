"""What only a worker process knows, served by that process, and the Celery hooks that set each worker up.

Importing this module (workers.runtime does) connects three Celery signals:
- `setup_logging`: Celery leaves logging to us, and the worker logs through `service.observability.logging`;
- `worker_init`: with `MMJOBS_WORKER_METRICS_PORT` set, the worker serves its own metrics on that port
  (`prometheus_client`'s default registry: these histograms and gauges, plus the process collector);
- `task_prerun` / `task_postrun`: each task starts and ends with an empty log context, because a pool thread
  runs one task after another and must not carry the previous job's ids.

Scrape each worker on its port (`docker compose --scale worker=N` gives each its own address). Counts that must
survive a worker (attempts, tokens, cost, webhook outcomes) are read from Postgres by the API's `/metrics`.
"""

from __future__ import annotations

import logging
from typing import Any
from wsgiref.simple_server import WSGIServer

from celery import signals
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from service.config import Settings, get_settings
from service.observability import logging as obs_logging

log = logging.getLogger(__name__)

CALLS_IN_FLIGHT = Gauge("mmjobs_worker_calls_in_flight", "Upstream calls this worker process is making now")
# Jobs a receiver handed back to the queue because this process had no free call slot (workers/tasks.py). A full
# process takes no message (workers/celery_app.py `FetchOnlyWithRoom`): this counts the ones already on their way
# when its last slot went, and steady growth would mean that guard no longer holds.
JOBS_PASSED_ON = Counter(
    "mmjobs_worker_jobs_passed_on", "Jobs this worker process passed on to the queue, having no free call slot"
)
# MiniMax calls last from a second to many minutes (long generations, streamed).
UPSTREAM_SECONDS = Histogram(
    "mmjobs_upstream_call_duration_seconds",
    "Duration of one upstream call, from request to the last byte or the failure",
    ["model", "format", "classification"],
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800),
)
WEBHOOK_SECONDS = Histogram(
    "mmjobs_webhook_send_duration_seconds",
    "Duration of one webhook HTTP attempt",
    ["outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30),
)


def observe_call(model: str, format: str, classification: str, *, seconds: float) -> None:
    UPSTREAM_SECONDS.labels(model, format, classification).observe(seconds)


def observe_webhook(*, http_status: int | None, seconds: float) -> None:
    if http_status is None:
        outcome = "transport_error"
    else:
        outcome = "success" if 200 <= http_status < 300 else "http_error"
    WEBHOOK_SECONDS.labels(outcome).observe(seconds)


def serve(settings: Settings) -> WSGIServer | None:
    """Start the metrics HTTP server (a daemon thread) if a port is configured. A port in use is reported, not
    fatal: the worker's real job is running calls."""
    if not settings.worker_metrics_port:
        return None
    try:
        server, _thread = start_http_server(settings.worker_metrics_port)
    except OSError as exc:
        log.error("worker metrics: cannot listen on port %d: %s", settings.worker_metrics_port, exc)
        return None
    log.info("worker metrics at http://0.0.0.0:%d/metrics", settings.worker_metrics_port)
    return server


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    obs_logging.configure(get_settings())


@signals.worker_init.connect
def _serve_metrics(**_: Any) -> None:
    serve(get_settings())


@signals.task_prerun.connect
@signals.task_postrun.connect
def _fresh_log_context(**_: Any) -> None:
    obs_logging.clear()
