"""When a failed attempt runs again: exponential backoff with full jitter, Retry-After honoured, within the
job's attempt budget and deadline. A decision, not an action: the caller stores `retry_at` in Postgres and the
scheduler dispatches the job when it is due (DESIGN.md decision 3), never a long Celery countdown."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from workers.providers import Classification, UpstreamError

# Codes that say "a limit was hit": slow the shared limiter down as well as retrying.
LIMIT_CODES = frozenset({1002, 1039, 1041, 2045})
USAGE_CAP_CODE = 2056
# While MiniMax cannot be reached at all, free retries wait at most this long (full jitter below it).
UNREACHABLE_CAP_SECONDS = 30.0


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryDecision:
    retry_at: datetime | None  # None: do not retry
    reason: str  # why, in words a user reads on the job


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    base_seconds: float = 1.0
    cap_seconds: float = 300.0

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Full jitter (AWS architecture blog): uniform in [0, min(cap, base * 2^(attempt-1))]."""
        ceiling = min(self.cap_seconds, self.base_seconds * 2 ** max(0, attempt - 1))
        return (rng or random).uniform(0, ceiling)

    def decide(
        self,
        error: UpstreamError,
        *,
        attempt: int,
        max_attempts: int,
        now: datetime,
        deadline: datetime,
        rng: random.Random | None = None,
    ) -> RetryDecision:
        if error.classification is Classification.PERMANENT:
            return RetryDecision(retry_at=None, reason="permanent error: not retried")
        if error.unsent:
            # MiniMax was not reached, so this try is free: it does not use up an attempt (the caller adds one
            # back), and waits at most UNREACHABLE_CAP_SECONDS, so the batch resumes soon after an outage ends.
            # Only the job's deadline ends it, then as expired, saying why.
            delay = min(UNREACHABLE_CAP_SECONDS, self.backoff(attempt, rng))
            retry_at = now + timedelta(seconds=delay)
            if retry_at >= deadline:
                return RetryDecision(retry_at=None, reason="MiniMax could not be reached before the job's deadline")
            return RetryDecision(
                retry_at=retry_at, reason=f"MiniMax unreachable; tried again at {retry_at:%H:%M:%S} UTC (not counted)"
            )
        if attempt >= max_attempts:
            return RetryDecision(retry_at=None, reason=f"gave up after {attempt} attempts")
        delay = self.backoff(attempt, rng)
        if error.retry_after is not None:
            # The upstream said when; a 2056 reset time can be hours away and is honoured all the same.
            delay = max(delay, error.retry_after)
        retry_at = now + timedelta(seconds=delay)
        if retry_at >= deadline:
            return RetryDecision(
                retry_at=None,
                reason=f"the next try ({retry_at:%Y-%m-%d %H:%M:%S} UTC) would be past the job's deadline",
            )
        return RetryDecision(
            retry_at=retry_at, reason=f"retry {attempt + 1} of {max_attempts} at {retry_at:%H:%M:%S} UTC"
        )


def slows_the_limiter(error: UpstreamError) -> bool:
    """Did the upstream say we were too fast (so every worker should slow down, not just this job)? A permanent
    failure never does, whatever its status: MiniMax sends insufficient balance (1008) as HTTP 429 too."""
    if error.classification is Classification.PERMANENT:
        return False
    return error.http_status == 429 or error.minimax_code in LIMIT_CODES
