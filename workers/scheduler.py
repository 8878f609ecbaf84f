"""The scheduler loop: hand back jobs whose worker vanished, expire overdue ones, dispatch what is due under the
shared rate limits, and publish what it knows for the API (`GET /v1/limits`, why a job waits).

Any number may run: every step is a guarded UPDATE or a `FOR UPDATE SKIP LOCKED` selection.
Run with `mmjobs scheduler` (or `python -m workers.scheduler`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

import redis

from service import status
from service.config import Settings, get_settings
from service.db import engine_for, make_session_factory, transaction, utcnow
from service.dispatch import WAKE_CHANNEL
from service.jobs import transitions
from service.observability import logging as obs_logging
from service.tenants import repository as tenants_repo
from workers import cron, webhooks
from workers.celery_app import QUEUE, RUN_JOB, make_celery
from workers.dispatcher import Dispatcher
from workers.limiter import Limits, RateLimiter

log = logging.getLogger("mmjobs.scheduler")
SNAPSHOT_EVERY = 1.0
# While the broker holds max_unclaimed jobs, look again this soon: workers claim them in milliseconds.
SATURATED_RECHECK = 0.05
# Messages buffered before the pipeline is flushed mid-pass (a pass publishes at most max_unclaimed).
PUBLISH_BATCH = 500


class Scheduler:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.session_factory = make_session_factory(engine_for(settings))
        self.celery = make_celery(settings)
        self.redis = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
        self.limiter = RateLimiter(
            self.redis, account=settings.upstream_account, window_seconds=settings.limiter_window_seconds
        )
        self.dispatcher = Dispatcher(settings, self.limiter, self._publish)
        self.publish_webhook = webhooks.publisher(self.celery)
        self._last_snapshot = 0.0
        self._producer: Any = None
        self.next_wake = settings.scheduler_interval
        # Since when this process has reached the database without a failed pass (None: not since it last failed).
        self.reachable_since: float | None = None

    def _publish(self, job_id: str) -> None:
        self.celery.send_task(RUN_JOB, args=[job_id], queue=QUEUE, producer=self._producer)

    def run_once(self) -> dict[str, int]:
        now = utcnow()
        if self.reachable_since is None:
            self.reachable_since = time.monotonic()
        with transaction(self.session_factory) as session:
            recovered = transitions.recover_expired_leases(session, now=now) if self._may_recover() else []
        with transaction(self.session_factory) as session:
            expired = transitions.expire_overdue(session, now=now)
            transitions.cancel_waiting(session, now=now)
        # Publishing happens inside the transaction: if Redis refuses, the rows roll back to "not dispatched".
        # One producer for the whole pass, and its messages sent as one Redis pipeline when the pass ends
        # (kombu's publish batch): one round trip instead of one per job.
        with transaction(self.session_factory) as session, self.celery.producer_or_acquire() as producer:
            self._producer = producer
            try:
                with producer.batch(max_size=PUBLISH_BATCH):
                    report = self.dispatcher.run(session, now=now)
            finally:
                self._producer = None
        with transaction(self.session_factory) as session:
            webhooks.dispatch_due(session, now=now, publish=self.publish_webhook)
        with transaction(self.session_factory) as session:
            cron.fire_due(session, settings=self.settings, now=now)
        self.next_wake = min(self.settings.scheduler_interval, max(0.01, report.next_wake))
        if report.saturated:
            self.next_wake = SATURATED_RECHECK
        self._publish_status(report.waits)
        if recovered or expired or report.published or report.failed:
            log.info(
                "recovered %d leases, expired %d, published %d, failed %d (too large for the limits)",
                len(recovered), expired, len(report.published), len(report.failed),
            )  # fmt: skip
        return {
            "recovered": len(recovered),
            "expired": expired,
            "published": len(report.published),
            "failed": len(report.failed),
        }

    def _may_recover(self) -> bool:
        """Leases may be judged only once workers have had the database long enough to renew theirs: after an
        outage (or at start) every lease looks expired, though live workers hold finished calls they are about to
        record. Handing those back would call MiniMax again for them."""
        assert self.reachable_since is not None
        return time.monotonic() - self.reachable_since >= 2 * self.settings.lease_refresh_seconds

    def _publish_status(self, waits: dict[str, dict[str, Any]]) -> None:
        clock = time.monotonic()
        if clock - self._last_snapshot < SNAPSHOT_EVERY and not waits:
            return
        self._last_snapshot = clock
        models = {
            model: self.limiter.snapshot(model, model_limits=Limits(rpm=rpm, tpm=tpm))
            for model, (rpm, tpm) in self.settings.model_limits().items()
        }
        with self.session_factory() as session:
            capped = tenants_repo.capped(session)
        tenants = {
            t.id: self.limiter.tenant_snapshot(
                t.id, tenant_limits=Limits(rpm=t.rpm_limit, tpm=t.tpm_limit, concurrency=t.concurrency_limit)
            )
            for t in capped
        }
        status.publish(self.redis, {"at": utcnow().isoformat(), "waits": waits, "models": models, "tenants": tenants})

    def run_forever(self, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        pubsub: redis.client.PubSub | None = None
        while not stop.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("scheduler pass failed; retrying")
                self.next_wake = self.settings.scheduler_interval
                self.reachable_since = None
            pubsub = self._wait_for_wake(pubsub, self.next_wake)

    def _wait_for_wake(self, pubsub: redis.client.PubSub | None, timeout: float) -> redis.client.PubSub | None:
        """Sleep until `timeout` passes or the intake says new work arrived."""
        try:
            if pubsub is None:
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
                pubsub.subscribe(WAKE_CHANNEL)
            if not math.isinf(timeout):
                pubsub.get_message(timeout=timeout)
            # Drain a burst of nudges so one pass serves them all.
            while pubsub.get_message(timeout=0) is not None:
                pass
            return pubsub
        except redis.RedisError:
            threading.Event().wait(timeout)
            return None


def main() -> None:
    settings = get_settings()
    obs_logging.configure(settings)
    log.info("scheduler started (interval %ss)", settings.scheduler_interval)
    Scheduler(settings).run_forever()


if __name__ == "__main__":
    main()
