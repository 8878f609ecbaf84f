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
