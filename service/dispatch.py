"""The intake's only link to the workers: a best-effort nudge that new work is waiting.

The scheduler finds work in Postgres on its own every `scheduler_interval`; the nudge only saves that wait.
If Redis is down the job is still safe in the database, so a failed nudge is logged, never raised.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import redis
from sqlalchemy import event
from sqlalchemy.orm import Session

from service.config import Settings

WAKE_CHANNEL = "mmjobs:scheduler:wake"
# Job ids whose running call must stop now (canceled): workers subscribe (workers/runtime.py) and close the call
# within a fraction of a second, instead of noticing at their next lease renewal.
STOP_CHANNEL = "mmjobs:jobs:stop"
log = logging.getLogger(__name__)


@lru_cache(maxsize=4)
def _client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)


def wake_scheduler(settings: Settings) -> None:
    try:
        _client(settings.redis_url).publish(WAKE_CHANNEL, b"1")
    except redis.RedisError as exc:
        log.warning("could not nudge the scheduler (%s); it will find the work on its next pass", exc)


def wake_scheduler_after_commit(session: Session, settings: Settings) -> None:
    """Nudge once this session commits: before the commit the scheduler could not see the rows yet."""
    event.listen(session, "after_commit", lambda _s: wake_scheduler(settings), once=True)


def stop_calls_after_commit(session: Session, settings: Settings, *, job_ids: list[str]) -> None:
    """Once this session commits, tell the workers to stop these jobs' calls. Best effort: a worker that misses
    the notice stops the call at its next lease renewal, which finds the job no longer running."""

    def announce(_session: Session) -> None:
        try:
            client = _client(settings.redis_url)
            for job_id in job_ids:
                client.publish(STOP_CHANNEL, job_id.encode())
        except redis.RedisError as exc:
            log.warning(
                "could not announce the cancel of %s (%s); workers notice at their next lease renewal", job_ids, exc
            )

    event.listen(session, "after_commit", announce, once=True)
