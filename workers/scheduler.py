"""The scheduler loop: hand back jobs whose worker vanished, expire overdue ones, publish what is due.

Any number may run: every step is a guarded UPDATE or a `FOR UPDATE SKIP LOCKED` selection.
Run with `mmjobs scheduler` (or `python -m workers.scheduler`).
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

import redis

from service.config import Settings, get_settings
from service.db import make_engine, make_session_factory, transaction, utcnow
from service.dispatch import WAKE_CHANNEL
from service.jobs import transitions
from workers.celery_app import QUEUE, RUN_JOB, make_celery

log = logging.getLogger("mmjobs.scheduler")


class Scheduler:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.session_factory = make_session_factory(make_engine(settings.database_url))
        self.celery = make_celery(settings)
        self.redis = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)

    def run_once(self) -> dict[str, int]:
        now = utcnow()
        with transaction(self.session_factory) as session:
            recovered = transitions.recover_expired_leases(session, now=now)
        with transaction(self.session_factory) as session:
            expired = transitions.expire_overdue(session, now=now)
        published = 0
        with transaction(self.session_factory) as session:
            ids = transitions.take_dispatchable(
                session,
                now=now,
                redispatch_before=now - timedelta(seconds=self.settings.redispatch_after_seconds),
                limit=self.settings.dispatch_batch_size,
            )
            # Publish inside the transaction: if Redis refuses, the rows roll back to "not dispatched".
            for job_id in ids:
                self.celery.send_task(RUN_JOB, args=[job_id], queue=QUEUE)
                published += 1
        if recovered or expired or published:
            log.info("recovered %d leases, expired %d, published %d", len(recovered), expired, published)
        return {"recovered": len(recovered), "expired": expired, "published": published}

    def run_forever(self, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        pubsub: redis.client.PubSub | None = None
        while not stop.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("scheduler pass failed; retrying")
            pubsub = self._wait_for_wake(pubsub)

    def _wait_for_wake(self, pubsub: redis.client.PubSub | None) -> redis.client.PubSub | None:
        """Sleep until the interval passes or the intake says new work arrived."""
        interval = self.settings.scheduler_interval
        try:
            if pubsub is None:
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
                pubsub.subscribe(WAKE_CHANNEL)
            pubsub.get_message(timeout=interval)
            # Drain a burst of nudges so one pass serves them all.
            while pubsub.get_message(timeout=0) is not None:
                pass
            return pubsub
        except redis.RedisError:
            threading.Event().wait(interval)
            return None


def main() -> None:
    settings = get_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    log.info("scheduler started (interval %ss)", settings.scheduler_interval)
    Scheduler(settings).run_forever()


if __name__ == "__main__":
    main()
