"""When a failed delivery is tried again: Svix's schedule, from the stored attempt count (no Celery countdowns)."""

from __future__ import annotations

import random

# Delay before attempt 1, 2, ... 8: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (about 27 h in all).
SCHEDULE_SECONDS: tuple[float, ...] = (0, 5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 10 * 3600)
MAX_ATTEMPTS = len(SCHEDULE_SECONDS)
JITTER = 0.10
# A receiver's Retry-After is honoured when longer than the schedule, up to a day: a typo must not park
# a delivery for a year.
MAX_RETRY_AFTER_SECONDS = 24 * 3600.0
# Deliveries that fail without a break for this long disable their endpoint.
DISABLE_AFTER_SECONDS = 5 * 24 * 3600.0


def next_delay(
    attempts_made: int, *, retry_after: float | None = None, rng: random.Random | None = None
) -> float | None:
    """Seconds until the next attempt after `attempts_made` failed ones, or None when the schedule is spent."""
    if attempts_made >= MAX_ATTEMPTS:
        return None
    base = SCHEDULE_SECONDS[max(0, attempts_made)]
    delay = base * (rng or random).uniform(1 - JITTER, 1 + JITTER)
    if retry_after is not None and retry_after > delay:
        delay = min(retry_after, MAX_RETRY_AFTER_SECONDS)
    return delay
