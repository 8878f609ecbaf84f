"""Prometheus metrics for the whole service at the API's `GET /metrics`.

Why the figures are read, not counted: API, workers and schedulers are separate processes, usually on separate
hosts, and any of them may restart. A counter incremented in a worker's memory would reach Prometheus only from
that worker, would be lost with it, and Prometheus' multiprocess mode needs a directory shared by every process,
which hosts do not share. Everything this endpoint shows is therefore read, at scrape time, from the places every
process already writes to:

- Postgres, the source of truth: jobs by state, waiting jobs and how long the oldest has been due, and the
  totals of finished jobs, attempts by classification, tokens and cost (`usage_ledger`) and webhook deliveries
  and attempts. The totals are sums over append-only rows, so they only grow: exposed as counters, and any API
  replica answers the same numbers (a scrape of another replica never looks like a counter reset).
- Redis: the broker queue's length, and the scheduler's status document (`service.status`) for the rate
  limiter's use and effective limits per model; its absence means no scheduler runs (`mmjobs_scheduler_up 0`).

What exists only inside a worker process (calls in flight, the upstream latency histogram) is served by each
worker itself on `MMJOBS_WORKER_METRICS_PORT` (`service.observability.worker`): scrape every worker.

The figures are cached for `MMJOBS_METRICS_CACHE_SECONDS` per API process, so frequent scrapes cost little.
`/metrics` needs no API key: it shows counts, never tenants or contents. Keep it off the public network (a
firewall or the reverse proxy), or set `MMJOBS_METRICS_TOKEN` to require `Authorization: Bearer TOKEN`.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import redis
from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from service import accounts, status
from service.api.errors import APIError
from service.config import Settings
from service.db import utcnow
from service.models import ACTIVE, TERMINAL
from service.observability import repository

log = logging.getLogger(__name__)
Metric = GaugeMetricFamily | CounterMetricFamily
# The Celery queue (workers.celery_app.QUEUE; the intake never imports worker code), and the suffixes under
# which kombu's Redis transport keeps its priority sub-queues.
BROKER_QUEUE = "mmjobs"
BROKER_PRIORITY_KEYS = tuple(f"{BROKER_QUEUE}\x06\x16{p}" for p in (3, 6, 9))
ATTEMPT_CLASSIFICATIONS = (
    "succeeded", "retryable", "permanent", "rate_limited", "lease_expired", "interrupted", "canceled", "internal",
)  # fmt: skip
TOKEN_KINDS = ("input", "output", "cache_read", "cache_write")


class ServiceCollector(Collector):
    """Reads the figures from the app's session factory and Redis client at collect time (tests swap them)."""

    def __init__(self, state: Any, settings: Settings) -> None:
        self.state = state
        self.settings = settings
        self._lock = threading.Lock()
        self._cached: list[Metric] = []
        self._cached_at: float | None = None

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            clock = time.monotonic()
            if self._cached_at is None or clock - self._cached_at >= self.settings.metrics_cache_seconds:
                self._cached = self.read()
                self._cached_at = clock
            families = self._cached
        yield from families

    def read(self) -> list[Metric]:
        up = GaugeMetricFamily("mmjobs_metrics_source_up", "1 if /metrics could read this source", labels=["source"])
        families: list[Metric] = [up]
        factory: sessionmaker[Session] = self.state.session_factory
        try:
            with factory() as session:
                families += database_families(session, models=list(self.settings.model_limits()), now=utcnow())
            up.add_metric(["postgres"], 1)
        except Exception as exc:
            log.warning("metrics: cannot read Postgres: %s", exc)
            up.add_metric(["postgres"], 0)
        try:
            families += redis_families(self.state.redis, now=utcnow())
            families += accounts.metric_families(self.state.redis, [a.name for a in self.settings.accounts()])
            up.add_metric(["redis"], 1)
        except redis.RedisError as exc:
            log.warning("metrics: cannot read Redis: %s", exc)
            up.add_metric(["redis"], 0)
        return families


def database_families(session: Session, *, models: list[str], now: datetime) -> list[Metric]:
    jobs = GaugeMetricFamily("mmjobs_jobs", "Jobs not finished, by status and model", labels=["status", "model"])
    depth = GaugeMetricFamily(
        "mmjobs_queue_depth", "Waiting jobs (queued or retrying) that are due to run now", labels=["model"]
    )
    age = GaugeMetricFamily(
        "mmjobs_queue_oldest_age_seconds",
        "How long the longest-waiting due job has been due (0 when none is)",
        labels=["model"],
    )
    waiting = repository.waiting(session, now=now)
    running = repository.running(session)
    counts = {(str(s), m): 0 for s in ACTIVE for m in models}
    due = dict.fromkeys(models, 0)
    oldest: dict[str, datetime | None] = dict.fromkeys(models)
    for group in waiting:
        counts[(group.status, group.model)] = group.count
        due[group.model] = due.get(group.model, 0) + group.due
        first = oldest.get(group.model)
        if group.oldest_due_at is not None and (first is None or group.oldest_due_at < first):
            oldest[group.model] = group.oldest_due_at
    for model, count in running.items():
        counts[("running", model)] = count
    for (state, model), count in sorted(counts.items()):
        jobs.add_metric([state, model], count)
    for model in sorted(due):
        depth.add_metric([model], due[model])
        since = oldest.get(model)
        age.add_metric([model], max(0.0, (now - _aware(since)).total_seconds()) if since else 0.0)

    finished = CounterMetricFamily(
        "mmjobs_jobs_finished", "Jobs that reached a terminal state, by status and model", labels=["status", "model"]
    )
    terminal = {(str(s), m): 0 for s in TERMINAL for m in models} | repository.finished(session)
    for (state, model), count in sorted(terminal.items()):
        finished.add_metric([state, model], count)

    attempts = CounterMetricFamily(
        "mmjobs_attempts", "Finished upstream attempts by classification", labels=["classification"]
    )
    for classification, count in sorted(
        (dict.fromkeys(ATTEMPT_CLASSIFICATIONS, 0) | repository.attempts(session)).items()
    ):
        attempts.add_metric([classification], count)

    tokens = CounterMetricFamily(
        "mmjobs_tokens", "Tokens billed by MiniMax, by model and kind", labels=["model", "kind"]
    )
    cost = CounterMetricFamily("mmjobs_cost_usd", "Cost of the billed tokens in USD, by model", labels=["model"])
    for totals in repository.usage(session):
        for kind in TOKEN_KINDS:
            tokens.add_metric([totals.model, kind], getattr(totals, f"{kind}_tokens"))
        cost.add_metric([totals.model], float(totals.cost_usd))

    return [jobs, depth, age, finished, attempts, tokens, cost, *webhook_families(session)]


def webhook_families(session: Session) -> list[Metric]:
    by_status = repository.webhook_deliveries(session)
    deliveries = CounterMetricFamily(
        "mmjobs_webhook_deliveries", "Webhook deliveries that ended, by outcome", labels=["outcome"]
    )
    for outcome in ("delivered", "failed"):
        deliveries.add_metric([outcome], by_status.get(outcome, 0))
    pending = GaugeMetricFamily("mmjobs_webhook_deliveries_pending", "Webhook deliveries still to be made")
    pending.add_metric([], by_status.get("pending", 0))
    attempts = CounterMetricFamily(
        "mmjobs_webhook_attempts",
        "Webhook HTTP attempts: success (2xx), http_error (other status), transport_error (no answer)",
        labels=["outcome"],
    )
    for outcome, count in sorted(
        ({"success": 0, "http_error": 0, "transport_error": 0} | repository.webhook_attempts(session)).items()
    ):
        attempts.add_metric([outcome], count)
    return [deliveries, pending, attempts]


def redis_families(client: redis.Redis, *, now: datetime) -> list[Metric]:
    pipe = client.pipeline(transaction=False)
    for key in (BROKER_QUEUE, *BROKER_PRIORITY_KEYS):
        pipe.llen(key)
    broker = GaugeMetricFamily("mmjobs_broker_queue_length", "Messages waiting in the Celery queue (Redis)")
    broker.add_metric([], sum(int(n) for n in pipe.execute()))
    raw = client.get(status.STATUS_KEY)  # read directly: status.read() swallows the error we report as down
    doc: dict[str, Any] = json.loads(raw) if raw else {}
    return [broker, *limiter_families(doc, now=now)]


# Per-model figures of the scheduler's status document: (metric, help, section, field).
LIMITER_GAUGES = (
    ("mmjobs_limiter_used_requests", "Requests admitted over the limiter's window", "used", "requests"),
    ("mmjobs_limiter_used_tokens", "Tokens admitted over the limiter's window", "used", "tokens"),
    ("mmjobs_limiter_effective_rpm", "Requests per minute the limiter allows now", "effective", "rpm"),
    ("mmjobs_limiter_effective_tpm", "Tokens per minute the limiter allows now", "effective", "tpm"),
)


def limiter_families(doc: dict[str, Any], *, now: datetime) -> list[Metric]:
    up = GaugeMetricFamily("mmjobs_scheduler_up", "1 while a scheduler publishes its status document")
    up.add_metric([], 1 if doc else 0)
    families: list[Metric] = [up]
    at = _parse_time(doc.get("at"))
    if at is not None:
        age = GaugeMetricFamily("mmjobs_scheduler_status_age_seconds", "Age of the scheduler's status document")
        age.add_metric([], max(0.0, (now - at).total_seconds()))
        families.append(age)
    models: dict[str, dict[str, Any]] = doc.get("models") or {}
    for name, help_text, section, field in LIMITER_GAUGES:
        gauge = GaugeMetricFamily(name, help_text, labels=["model"])
        for model, snap in sorted(models.items()):
            value = (snap.get(section) or {}).get(field)
            if value is not None:
                gauge.add_metric([model], float(value))
        families.append(gauge)
    factor = GaugeMetricFamily(
        "mmjobs_limiter_backoff_factor",
        "Share of the configured limits in force after 429s (1: none)",
        labels=["model"],
    )
    utilization = GaugeMetricFamily(
        "mmjobs_limiter_utilization_ratio", "Used / effective limit over the window", labels=["model", "dimension"]
    )
    for model, snap in sorted(models.items()):
        if snap.get("factor") is not None:
            factor.add_metric([model], float(snap["factor"]))
        used, effective = snap.get("used") or {}, snap.get("effective") or {}
        for dimension, limit in (("requests", "rpm"), ("tokens", "tpm")):
            if used.get(dimension) is not None and effective.get(limit):
                utilization.add_metric([model, dimension], float(used[dimension]) / float(effective[limit]))
    return [*families, factor, utilization]


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return _aware(datetime.fromisoformat(value))
    except ValueError:
        return None


def install(app: FastAPI, settings: Settings) -> CollectorRegistry:
    """Mount `GET /metrics` on the app, with a registry of its own (several apps may live in one process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(app.state, settings))

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        if settings.metrics_token:
            presented = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(presented.encode(), settings.metrics_token.encode()):
                raise APIError(401, "authentication_error", "send `Authorization: Bearer MMJOBS_METRICS_TOKEN`")
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return registry
