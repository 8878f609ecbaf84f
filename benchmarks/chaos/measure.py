"""The chaos figures, as plain functions of what a scenario collected (definitions: benchmarks/README.md).

- lost: a job that is not terminal at the end and whose row does not explain why it waits;
- duplicate results: a custom_id more than once in the batch's results, or a job with more than one succeeded
  attempt in job_attempts;
- duplicate upstream calls: calls the simulator completed and billed beyond one per succeeded job: its ledger's
  `succeeded` entries whose request id is not the `upstream_request_id` of a succeeded job's result (the answer
  we kept), i.e. answers paid for and thrown away or superseded;
- time to recover: from the end of the fault until the success rate is back to 80 % of the rate of the 10 s
  before the fault (over a 5 s window), or until the batch ended, whichever comes first.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

TERMINAL = frozenset({"succeeded", "failed", "canceled", "expired"})
WAITING = frozenset({"queued", "retrying"})
# Why-it-waits reasons (GET /v1/jobs/{id} `waiting.reason`) that explain a job not being terminal yet.
EXPLAINED = frozenset({"retry_backoff", "rate_limit", "tenant_cap", "budget", "worker_capacity"})
RATE_BEFORE_SECONDS = 10.0
RATE_WINDOW_SECONDS = 5.0
RATE_SHARE = 0.8


@dataclass(frozen=True, slots=True)
class Sample:
    """Job counts read from Postgres at monotonic time `t`."""

    t: float
    total: int
    terminal: int
    succeeded: int
    running: int
    batch_terminal: int


@dataclass
class ScenarioResult:
    scenario: str
    jobs: int = 0
    terminal: int = 0
    succeeded: int = 0
    failed: int = 0
    lost: int = 0
    duplicate_results: int = 0
    duplicate_upstream: int = 0
    in_flight_at_fault: int = 0
    recovery: str = "n/a"
    recover_seconds: float | None = None
    webhooks_expected: int | None = None
    webhooks_delivered: int | None = None
    waiting: dict[str, int] = field(default_factory=dict)  # not terminal at the end, by explanation
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def meets_targets(self) -> bool:
        return (
            self.error is None
            and self.lost == 0
            and self.duplicate_results == 0
            and self.duplicate_upstream <= self.in_flight_at_fault
            and (self.webhooks_expected is None or self.webhooks_delivered == self.webhooks_expected)
        )


def explain(
    row: Mapping[str, Any], waiting: Mapping[str, Any] | None, *, now: datetime, redispatch_after: float
) -> str | None:
    """Why a job that is not terminal is not, from its row and its `waiting` field; None if nothing explains it
    (then it is lost). `row` holds status, lease_expires_at and dispatched_at."""
    status = row["status"]
    if status == "running":
        lease = row.get("lease_expires_at")
        return "running (lease held)" if lease is not None and lease > now else None
    if status not in WAITING or waiting is None:
        return None
    reason = str(waiting.get("reason"))
    if reason in EXPLAINED:
        return reason
    dispatched = row.get("dispatched_at")
    if reason == "dispatched" and dispatched is not None and now - dispatched < timedelta(seconds=redispatch_after):
        # Published recently; if its message was lost the scheduler publishes it again after redispatch_after.
        return "dispatched"
    return None


def duplicate_results(custom_ids: Iterable[str], succeeded_attempts: Counter[str]) -> tuple[int, int]:
    """(custom_ids seen more than once in the results, extra succeeded attempts of one job)."""
    seen = Counter(custom_ids)
    return sum(n - 1 for n in seen.values() if n > 1), sum(n - 1 for n in succeeded_attempts.values() if n > 1)


def duplicate_upstream(ledger: Iterable[Mapping[str, Any]], answers: set[str]) -> tuple[int, int]:
    """(calls the upstream completed and billed that are not the answer a succeeded job kept, kept answers whose
    call is not in the ledger: calls the ledger missed, e.g. billed between its last read and a simulator kill).

    `answers`: the upstream request id of each succeeded job's result."""
    completed = {str(e["request_id"]) for e in ledger if e.get("outcome") == "succeeded"}
    return len(completed - answers), len(answers - completed)


def _value(samples: Sequence[Sample], t: float) -> int:
    """Succeeded jobs at time t (the last sample at or before t)."""
    i = bisect.bisect_right(samples, t, key=lambda s: s.t)
    return samples[i - 1].succeeded if i else 0


def recovery(
    samples: Sequence[Sample], *, fault_start: float, fault_end: float, ended_at: float | None
) -> tuple[float | None, str]:
    """Seconds from the end of the fault until the success rate is back, and how that was decided.

    The rate before is the success rate over the RATE_BEFORE_SECONDS before the fault (from the first success, if
    the batch started later). It is back at the first t >= fault_end where the next RATE_WINDOW_SECONDS see
    RATE_SHARE of that rate (or of what was left to do, near the end). If the batch ends first, the answer is the
    time until it ended.
    """
    if not samples:
        return None, "no samples"
    if ended_at is not None and ended_at <= fault_end:
        return 0.0, "batch ended during the fault"
    first_success = next((s.t for s in samples if s.succeeded > 0), None)
    if first_success is None or first_success >= fault_start:
        return None, "no success before the fault"
    start = max(fault_start - RATE_BEFORE_SECONDS, first_success)
    span = fault_start - start
    rate = (_value(samples, fault_start) - _value(samples, start)) / span if span > 0 else 0.0
    if rate <= 0:
        return None, "no success rate before the fault"
    total = samples[-1].total
    t = fault_end
    last = samples[-1].t
    while t + RATE_WINDOW_SECONDS <= last:
        if ended_at is not None and t >= ended_at:
            break
        done = _value(samples, t)
        left = total - done
        need = RATE_SHARE * min(rate * RATE_WINDOW_SECONDS, left)
        if left > 0 and _value(samples, t + RATE_WINDOW_SECONDS) - done >= need:
            return t - fault_end, "rate back"
        t += 0.25
    if ended_at is not None:
        return ended_at - fault_end, "batch ended"
    return None, "not back when the run stopped"
