"""Svix's schedule, computed from the stored attempt count: pure, no database."""

from __future__ import annotations

import random

import pytest

from service.webhooks.retry import MAX_ATTEMPTS, SCHEDULE_SECONDS, next_delay
from workers.webhooks import retry_after_seconds

MINUTE, HOUR = 60, 3600


def test_schedule_is_svix() -> None:
    assert SCHEDULE_SECONDS == (0, 5, 5 * MINUTE, 30 * MINUTE, 2 * HOUR, 5 * HOUR, 10 * HOUR, 10 * HOUR)
    assert MAX_ATTEMPTS == 8


@pytest.mark.parametrize(("attempts_made", "base"), list(enumerate(SCHEDULE_SECONDS)))
def test_delay_follows_the_attempt_count_with_10_percent_jitter(attempts_made: int, base: float) -> None:
    rng = random.Random(attempts_made)
    delays = [next_delay(attempts_made, rng=rng) for _ in range(200)]
    assert all(d is not None and base * 0.9 <= d <= base * 1.1 for d in delays)
    if base:
        assert len(set(delays)) > 100  # jittered, not fixed


def test_no_ninth_attempt() -> None:
    assert next_delay(MAX_ATTEMPTS) is None
    assert next_delay(MAX_ATTEMPTS + 3, retry_after=5) is None


def test_retry_after_wins_only_when_longer() -> None:
    rng = random.Random(1)
    assert next_delay(1, retry_after=600, rng=rng) == 600
    short = next_delay(2, retry_after=10, rng=rng)
    assert short is not None
    assert short >= 270
    assert next_delay(1, retry_after=10**9, rng=rng) == 24 * HOUR  # capped


def test_retry_after_header_forms() -> None:
    assert retry_after_seconds("120") == 120
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    past = retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT")
    assert past == 0
    future = retry_after_seconds("Fri, 01 Jan 2100 00:00:00 GMT")
    assert future is not None
    assert future > 10 * 365 * 24 * HOUR
