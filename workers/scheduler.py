"""The scheduler loop: hand back jobs whose worker vanished, expire overdue ones, dispatch what is due under the
shared rate limits, and publish what it knows for the API (`GET /v1/limits`, why a job waits).

Any number may run: every step is a guarded UPDATE or a `FOR UPDATE SKIP LOCKED` selection.
Each step runs on its own, in its own transactions (retried whole on a deadlock or serialization failure): one
that fails is logged and the others still run, so one tenant's trouble cannot stop dispatch, webhooks, cron or
lease recovery for everyone (issue 13). Sweeps move at most SWEEP_CHUNKS chunks a pass and go on next pass.
Run with `mmjobs scheduler` (or `python -m workers.scheduler`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import httpx
import redis
from sqlalchemy import exc as sa_exc

from service import status
from service.batches import tally
from service.config import Settings, get_settings
from service.db import db_now, engine_for, is_conflict, make_session_factory, run_in_transaction, utcnow
from service.dispatch import WAKE_CHANNEL
from service.jobs import transitions
from service.observability import logging as obs_logging
from service.observability import tracing
from service.tenants import repository as tenants_repo
from workers import cron, webhooks
from workers.celery_app import QUEUE, RUN_JOBS, make_celery
from workers.dispatcher import Dispatcher, DispatchReport
from workers.limiter import Limits, RateLimiter

log = logging.getLogger("mmjobs.scheduler")
SNAPSHOT_EVERY = 1.0
# While the broker holds max_unclaimed jobs, look again this soon: workers claim them in milliseconds.
SATURATED_RECHECK = 0.05
# Messages buffered before the pipeline is flushed mid-pass (a pass publishes at most max_unclaimed).
PUBLISH_BATCH = 500
# Chunks (transitions.CHUNK rows each) one sweep (expire, cancel) moves per pass at most: the rest goes on next
# pass, after this pass has dispatched (a 100,000-request batch expiring never holds up another tenant's job).
SWEEP_CHUNKS = 10
# ...and for about this long at most (a loaded database moves a chunk in a second or more).
SWEEP_SECONDS = 2.0
T = TypeVar("T")


def split_evenly(items: list[str], most: int) -> list[list[str]]:
    """`items` in order, in as few chunks of at most `most` as possible, their sizes differing by one at most."""
    if not items:
        return []
    count = -(-len(items) // most)
    size, extra = divmod(len(items), count)
    chunks, at = [], 0
    for i in range(count):
        n = size + (i < extra)
        chunks.append(items[at : at + n])
        at += n
    return chunks


class Scheduler:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        tracing.configure(settings, role="scheduler")  # no-op unless MMJOBS_OTEL_ENABLED
        self.session_factory = make_session_factory(engine_for(settings))
        self.celery = make_celery(settings)
        self.redis = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
        self.limiter = RateLimiter(
            self.redis, account=settings.upstream_account, window_seconds=settings.limiter_window_seconds
        )
        self.dispatcher = Dispatcher(settings, self.limiter, self._publish, batch=self._publish_batch)
        self.publish_webhook = webhooks.publisher(self.celery)
        self._last_snapshot = 0.0
        self._http: httpx.Client | None = None
        self._producer: Any = None
        self._pending: list[str] | None = None  # job ids granted in this pass, published when it ends
        self._failures: list[Exception] = []
        self._more = False
        self.next_wake = settings.scheduler_interval
        # Since when this process has reached the database without a failed pass (None: not since it last failed).
        self.reachable_since: float | None = None

    def _publish(self, job_id: str) -> None:
        """Inside `_publish_batch`: the job goes out in one of the pass's messages when the block ends."""
        if self._pending is None:
            self._send([job_id])
        else:
            self._pending.append(job_id)

    def _send(self, job_ids: list[str]) -> None:
        self.celery.send_task(RUN_JOBS, args=[job_ids], queue=QUEUE, producer=self._producer)

    @contextmanager
    def _publish_batch(self) -> Iterator[None]:
        """The pass's jobs, in the order granted, in messages of at most MMJOBS_JOBS_PER_MESSAGE jobs each (one
        message, one claim statement for all its jobs: issue 17.1), split evenly (20 jobs: two messages of 10,
        not 16 and 4). One producer sends them as one Redis pipeline when the block ends (kombu's publish batch):
        one round trip for the pass. The dispatcher opens it after its commit."""
        self._pending = []
        try:
            yield
            pending = self._pending
            with self.celery.producer_or_acquire() as producer:
                self._producer = producer
                with producer.batch(max_size=PUBLISH_BATCH):
                    for chunk in split_evenly(pending, self.settings.jobs_per_message):
                        self._send(chunk)
        finally:
            self._pending = None
            self._producer = None

    def _step(self, name: str, fn: Callable[[], T], default: T) -> T:
        """Run one step; if it fails, log it, remember the failure, and let the pass go on."""
        try:
            return fn()
        except Exception as exc:
            log.exception("scheduler step %r failed; the other steps still run", name)
            self._failures.append(exc)
            return default

    def _tx(self, work: Callable[[Any], T]) -> T:
        return run_in_transaction(self.session_factory, work)

    def _sweep(self, step: Callable[..., int], now: Any) -> int:
        """Up to SWEEP_CHUNKS chunks of a sweep, each in its own short transaction; stops at a short chunk."""
        moved = 0
        started = time.monotonic()
        for _ in range(SWEEP_CHUNKS):
            n = self._tx(lambda s: step(s, now=now))
            moved += n
            if n < transitions.CHUNK:
                return moved
            if time.monotonic() - started > SWEEP_SECONDS:
                break
        self._more = True  # work left: the next pass comes at once
        return moved

    def run_once(self) -> dict[str, int]:
        """One pass: every step runs even when another fails; the first failure is raised once all have run."""
        self._failures = []
        if self.reachable_since is None:
            self.reachable_since = time.monotonic()
        with self.session_factory() as session:
            now = db_now(session)  # one clock for every process: the database's (issue 13 point 6)
        recovered: list[str] = []
        if self._may_recover():
            recovered = self._step(
                "recover leases",
                lambda: self._tx(lambda s: transitions.recover_expired_leases(s, now=now)),
                [],
            )
        # Dispatch before the sweeps: a job that expired or whose batch is canceling is never dispatchable
        # anyway, and another tenant's job never waits behind a sweep of someone's huge batch.
        report = self._step("dispatch", lambda: self.dispatcher.run(self.session_factory, now=now), None)
        self._step(
            "webhooks",
            lambda: self._tx(lambda s: webhooks.dispatch_due(s, now=now, publish=self.publish_webhook)),
            0,
        )
        self._step(
            "cron",
            lambda: self._tx(lambda s: cron.fire_due(s, settings=self.settings, now=now)),
            None,
        )
        self._more = False
        expired = self._step("expire", lambda: self._sweep(transitions.expire_overdue, now), 0)
        self._step("cancel", lambda: self._sweep(transitions.cancel_waiting, now), 0)
        # After the sweeps, so a batch whose last requests they ended ends in this pass (service/batches/tally.py).
        ended: list[str] = []
        self._step("fold batch tallies", lambda: self._tx(lambda s: tally.fold(s, now=now)), ended)
        if report is None:
            report = DispatchReport()
        self.next_wake = min(self.settings.scheduler_interval, max(0.01, report.next_wake))
        if report.more:
            self.next_wake = 0.0  # jobs this pass did not read wait, and the broker has room: read them now
        elif report.saturated or self._more:
            self.next_wake = SATURATED_RECHECK
        if self.dispatcher.pool.multi:
            self._step("probe accounts", self._probe_accounts, None)
        self._step("status", lambda: self._publish_status(report.waits), None)
        if recovered or expired or report.published or report.failed:
            log.info(
                "recovered %d leases, expired %d, published %d, failed %d (too large for the limits)",
                len(recovered), expired, len(report.published), len(report.failed),
            )  # fmt: skip
        if self._failures:
            raise self._failures[0]
        return {
            "recovered": len(recovered),
            "expired": expired,
            "published": len(report.published),
            "failed": len(report.failed),
        }

    def _probe_accounts(self) -> None:
        self.dispatcher.pool.probe(self._probe_http())

    def _probe_http(self) -> httpx.Client:
        """The client the account probes use (service/accounts/: an account out of the rotation, every while)."""
        if self._http is None:
            self._http = httpx.Client(timeout=httpx.Timeout(30.0, connect=self.settings.upstream_connect_timeout))
        return self._http

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
        document: dict[str, Any] = {"at": utcnow().isoformat(), "waits": waits, "models": models, "tenants": tenants}
        if self.dispatcher.pool.multi:
            document["accounts"] = self.dispatcher.pool.snapshots()
        if self.dispatcher.pool.tenants:
            document["tenant_accounts"] = self.dispatcher.pool.tenant_snapshots()
        status.publish(self.redis, document)

    def run_forever(self, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        pubsub: redis.client.PubSub | None = None
        while not stop.is_set():
            try:
                self.run_once()
            except Exception as exc:
                # Each failed step has logged its traceback; a database that cannot be reached also means every
                # lease looks expired once it is back: wait for workers to renew theirs before judging them.
                log.warning("scheduler pass had a failed step (%s); retrying", type(exc).__name__)
                self.next_wake = self.settings.scheduler_interval
                if _database_unreachable(exc):
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


def _database_unreachable(exc: BaseException) -> bool:
    lost = isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError)
    return lost and not is_conflict(exc)


def main() -> None:
    settings = get_settings()
    obs_logging.configure(settings)
    log.info("scheduler started (interval %ss)", settings.scheduler_interval)
    Scheduler(settings).run_forever()


if __name__ == "__main__":
    main()
