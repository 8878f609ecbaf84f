"""Chaos (issue 8), small: a 100-request batch through the whole stack as separate processes, one fault injected
while it runs, through the same driver code as `python -m benchmarks.chaos` (benchmarks/chaos/run.py).

Each asserts what must hold whatever the timing: no job lost, no result recorded twice, and no more calls paid
for and thrown away than were in flight when the fault hit.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from benchmarks.chaos.infra import Infra
from benchmarks.chaos.measure import ScenarioResult
from benchmarks.chaos.run import run_scenario
from benchmarks.chaos.stack import SMALL

pytestmark = pytest.mark.chaos


def _explain(result: ScenarioResult, logs: Path) -> str:
    return f"{result}\nprocess logs, attempts, ledger and results: {logs}"


@pytest.mark.parametrize("scenario", ["worker_sigkill", "redis_restart_empty", "postgres_restart", "simulator_down"])
def test_a_fault_mid_batch_loses_and_duplicates_nothing(scenario: str, infra: Infra, tmp_path: Path) -> None:
    logs = tmp_path / scenario
    result = run_scenario(scenario, SMALL, infra, logs)

    assert result.error is None, _explain(result, logs)
    assert result.jobs == SMALL.requests, _explain(result, logs)
    assert result.lost == 0, _explain(result, logs)
    assert result.duplicate_results == 0, _explain(result, logs)
    assert result.duplicate_upstream <= result.in_flight_at_fault, _explain(result, logs)


def test_a_database_outage_longer_than_the_lease_duplicates_nothing(infra: Infra, tmp_path: Path) -> None:
    # Lease 6 s renewed every 2 s (production: 60 s every 10 s), Postgres away for 12 s.
    cfg = dataclasses.replace(SMALL, lease_seconds=6.0, lease_refresh_seconds=2.0)
    logs = tmp_path / "postgres_outage_past_lease"
    result = run_scenario("postgres_outage_past_lease", cfg, infra, logs)

    assert result.error is None, _explain(result, logs)
    assert result.lost == 0, _explain(result, logs)
    assert result.duplicate_results == 0, _explain(result, logs)
    assert result.duplicate_upstream <= result.in_flight_at_fault, _explain(result, logs)
