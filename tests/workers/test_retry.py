"""The retry policy: what is retried, when, and when it gives up."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from workers.providers import Classification, UpstreamError, classify
from workers.retry import RetryPolicy, slows_the_limiter

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
DEADLINE = NOW + timedelta(hours=24)


def error(*, status: int | None = None, code: int | None = None, retry_after: float | None = None) -> UpstreamError:
    return UpstreamError(
        classification=classify(http_status=status, minimax_code=code),
        error_type="x",
        message="m",
        http_status=status,
        minimax_code=code,
        retry_after=retry_after,
    )


RETRIED = [(429, None), (500, None), (502, None), (503, None), (504, None), (529, None), (None, None)] + [
    (200, c) for c in (1000, 1001, 1013, 1024, 1033, 1002, 1039, 1041, 2045, 2056)
]
NOT_RETRIED = [(s, None) for s in (400, 401, 403, 404, 413)] + [
    (400, c) for c in (1004, 1008, 1026, 1027, 1042, 2013, 2038, 2049)
]


@pytest.mark.parametrize(("status", "code"), RETRIED)
def test_retryable_failures_are_retried(status: int | None, code: int | None) -> None:
    decision = RetryPolicy().decide(
        error(status=status, code=code), attempt=1, max_attempts=5, now=NOW, deadline=DEADLINE
    )
    assert decision.retry_at is not None
    assert NOW <= decision.retry_at <= NOW + timedelta(seconds=1)


@pytest.mark.parametrize(("status", "code"), NOT_RETRIED)
def test_permanent_failures_fail_at_once(status: int, code: int | None) -> None:
    decision = RetryPolicy().decide(
        error(status=status, code=code), attempt=1, max_attempts=5, now=NOW, deadline=DEADLINE
    )
    assert decision.retry_at is None
    assert "permanent" in decision.reason


def test_backoff_grows_exponentially_with_full_jitter_and_a_cap() -> None:
    policy = RetryPolicy(base_seconds=1, cap_seconds=60)
    rng = random.Random(7)
    for attempt, ceiling in [(1, 1), (2, 2), (3, 4), (4, 8), (7, 60), (12, 60)]:
        samples = [policy.backoff(attempt, rng) for _ in range(400)]
        assert max(samples) <= ceiling
        # Full jitter spreads over the whole range, not around the ceiling.
        assert min(samples) < ceiling * 0.1
        assert max(samples) > ceiling * 0.9


def test_retry_after_is_honoured() -> None:
    decision = RetryPolicy().decide(
        error(status=429, retry_after=30), attempt=1, max_attempts=5, now=NOW, deadline=DEADLINE
    )
    assert decision.retry_at is not None
    assert decision.retry_at >= NOW + timedelta(seconds=30)


def test_usage_cap_waits_until_its_reset_time() -> None:
    three_hours = 3 * 3600.0
    decision = RetryPolicy().decide(
        error(status=429, code=2056, retry_after=three_hours), attempt=1, max_attempts=5, now=NOW, deadline=DEADLINE
    )
    assert decision.retry_at is not None
    assert NOW + timedelta(seconds=three_hours) <= decision.retry_at <= NOW + timedelta(seconds=three_hours + 1)


def test_gives_up_after_max_attempts() -> None:
    decision = RetryPolicy().decide(error(status=500), attempt=5, max_attempts=5, now=NOW, deadline=DEADLINE)
    assert decision.retry_at is None
    assert "5 attempts" in decision.reason


def test_never_retries_past_the_deadline() -> None:
    decision = RetryPolicy().decide(
        error(status=429, retry_after=120), attempt=1, max_attempts=5, now=NOW, deadline=NOW + timedelta(seconds=60)
    )
    assert decision.retry_at is None
    assert "deadline" in decision.reason


@pytest.mark.parametrize(
    ("status", "code", "slows"),
    [
        (429, None, True),
        (200, 1002, True),
        (200, 1039, True),
        (200, 1041, True),
        (200, 2045, True),
        (500, None, False),
        (529, None, False),
        (400, 2013, False),
    ],
)
def test_limit_errors_slow_the_shared_limiter(status: int, code: int | None, slows: bool) -> None:
    assert slows_the_limiter(error(status=status, code=code)) is slows


def test_classification_enum_values_are_what_jobs_show() -> None:
    assert {c.value for c in Classification} == {"retryable", "permanent", "rate_limited"}


def test_minimax_unreachable_is_retried_past_max_attempts_soon_and_only_until_the_deadline() -> None:
    """A connect failure never reached MiniMax: it does not use up attempts (a 2-minute outage must not fail a
    batch), waits at most 30 s between tries (the batch resumes soon after), and ends at the deadline."""
    import httpx

    from workers.providers.errors import transport_error

    unreachable = transport_error(httpx.ConnectError("Connection refused"), in_body=False)
    assert unreachable.unsent
    policy = RetryPolicy(base_seconds=1, cap_seconds=300)
    for attempt in (5, 12, 40):
        decision = policy.decide(unreachable, attempt=attempt, max_attempts=5, now=NOW, deadline=DEADLINE)
        assert decision.retry_at is not None, decision
        assert NOW < decision.retry_at <= NOW + timedelta(seconds=30)
        assert "not counted" in decision.reason
    late = policy.decide(unreachable, attempt=1, max_attempts=5, now=NOW, deadline=NOW)
    assert late.retry_at is None
    assert "could not be reached" in late.reason

    # Sent and then lost (the request may have run): counted as usual.
    broken = transport_error(httpx.ReadError("reset"), in_body=True)
    assert not broken.unsent
    assert policy.decide(broken, attempt=5, max_attempts=5, now=NOW, deadline=DEADLINE).retry_at is None
