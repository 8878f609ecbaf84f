"""The chaos figures computed from what a scenario collected (benchmarks/chaos/measure.py)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from benchmarks.chaos.measure import Sample, duplicate_results, duplicate_upstream, explain, recovery

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _samples(successes: list[int], total: int = 100) -> list[Sample]:
    """One sample a second: successes[i] jobs succeeded at t = i."""
    return [Sample(float(t), total, n, n, 0, n) for t, n in enumerate(successes)]


def test_recovery_is_when_the_success_rate_is_back() -> None:
    # 2 a second for 10 s, nothing during a fault from 10 to 15, then 2 a second again from t=18.
    successes = [2 * t for t in range(11)] + [20] * 8 + [20 + 2 * t for t in range(1, 30)]
    seconds, how = recovery(_samples(successes, total=200), fault_start=10, fault_end=15, ended_at=None)
    assert how == "rate back"
    assert seconds is not None
    assert 2 <= seconds <= 3


def test_recovery_is_the_end_of_the_batch_when_the_rate_never_comes_back() -> None:
    successes = [2 * t for t in range(11)] + [20] * 20
    seconds, how = recovery(_samples(successes, total=20), fault_start=10, fault_end=12, ended_at=25)
    assert (seconds, how) == (13, "batch ended")


def test_a_batch_that_ended_during_the_fault() -> None:
    successes = [2 * t for t in range(11)] + [20] * 20
    assert recovery(_samples(successes), fault_start=10, fault_end=20, ended_at=12)[1] == "batch ended during the fault"


def test_duplicate_results_count_repeated_custom_ids_and_extra_succeeded_attempts() -> None:
    lines = ["r1", "r2", "r2", "r3", "r3", "r3"]
    assert duplicate_results(lines, Counter({"job_a": 1, "job_b": 2})) == (3, 1)


def test_duplicate_upstream_calls_are_completed_calls_we_did_not_record() -> None:
    ledger = [
        {"request_id": "a", "outcome": "succeeded"},
        {"request_id": "b", "outcome": "succeeded"},  # paid for, never recorded
        {"request_id": "c", "outcome": "midstream_error"},  # broken: not a completed call
    ]
    assert duplicate_upstream(ledger, {"a", "z"}) == (1, 1)


def test_a_waiting_job_is_explained_by_its_row_or_lost() -> None:
    row = {"status": "retrying", "lease_expires_at": None, "dispatched_at": None}
    assert explain(row, {"reason": "retry_backoff"}, now=NOW, redispatch_after=30) == "retry_backoff"
    assert explain(row, {"reason": "scheduling"}, now=NOW, redispatch_after=30) is None
    recent = {**row, "dispatched_at": NOW - timedelta(seconds=5)}
    assert explain(recent, {"reason": "dispatched"}, now=NOW, redispatch_after=30) == "dispatched"
    stale = {**row, "dispatched_at": NOW - timedelta(seconds=60)}
    assert explain(stale, {"reason": "dispatched"}, now=NOW, redispatch_after=30) is None
    running = {"status": "running", "lease_expires_at": NOW + timedelta(seconds=3), "dispatched_at": None}
    assert explain(running, None, now=NOW, redispatch_after=30) == "running (lease held)"
    expired = {**running, "lease_expires_at": NOW - timedelta(seconds=3)}
    assert explain(expired, None, now=NOW, redispatch_after=30) is None
