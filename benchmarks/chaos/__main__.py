"""Chaos driver (issue 8): the whole stack as separate processes, one fault per scenario during a running batch.

    .venv/bin/python -m benchmarks.chaos [--quick] [--scenario NAME ...] [--log-dir DIR] [--no-write]

Per scenario: a fresh database on a private Postgres cluster and an empty private redis-server (both started by
this driver on free ports, so restarting them touches nothing shared), the simulator, the API, the scheduler and
the workers; a batch through POST /v1/batches; the fault once part of the batch is terminal; then a wait until
every job is terminal (or a timeout) and one table row. A full run writes its table to benchmarks/RESULTS.md
(section `chaos`). Definitions: benchmarks/README.md and below the table.
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from benchmarks.chaos.infra import missing_tools, private_infra
from benchmarks.chaos.measure import ScenarioResult
from benchmarks.chaos.run import run_scenario
from benchmarks.chaos.stack import FULL, QUICK, SCENARIOS, ChaosConfig, fault_text
from benchmarks.report import RESULTS_ENV, machine, now, write_section

PASS, MISS = "✓", "✗"

DEFINITIONS = """\
- **jobs**: jobs of the scenario (the batch, plus the single jobs of `webhook_receiver_down`); **terminal**: in
  `succeeded`, `failed`, `canceled` or `expired` when the run stopped waiting.
- **lost**: a job that is not terminal at the end and whose row does not explain why it waits (running with a
  live lease, or `waiting.reason` retry_backoff / rate_limit / tenant_cap / budget / worker_capacity, or
  dispatched less than MMJOBS_REDISPATCH_AFTER_SECONDS ago). Target 0.
- **duplicate results**: custom_ids appearing more than once in `GET /v1/batches/{id}/results`, plus extra
  succeeded attempts of one job in `job_attempts`. Target 0.
- **duplicate upstream calls**: calls the simulator completed and billed (its ledger, outcome `succeeded`,
  kept across a simulator restart) beyond one per succeeded job: those whose request id is not the
  `upstream_request_id` of a succeeded job's result, i.e. answers paid for and not kept. Target: at most the
  calls in flight at the fault.
- **calls in flight at the fault**: jobs in status `running` just before the fault was injected.
- **time to recover**: from the end of the fault (the kill for an instantaneous fault; the restart otherwise)
  until the success rate is back to 80 % of its rate over the 10 s before the fault (over a 5 s window), or
  until the batch ended, whichever came first (the cell says which).
- **target**: ✓ when lost = 0, duplicate results = 0, duplicate upstream calls <= calls in flight (and, for the
  webhook scenario, every job.* / batch.ended event delivered at least once)."""


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__.splitlines()[0])
    p.add_argument("--scenario", action="append", choices=SCENARIOS, help="run only this scenario (repeatable)")
    p.add_argument("--quick", action="store_true", help="200-request batches and shorter outages")
    p.add_argument("--log-dir", type=Path, help="where process logs go (default: a new directory in /tmp)")
    p.add_argument("--no-write", action="store_true", help="print the table only; leave RESULTS.md alone")
    return p


def _cell_recovery(r: ScenarioResult) -> str:
    return r.recovery if r.error is None else "n/a"


def table(results: Sequence[ScenarioResult]) -> str:
    lines = [
        "| scenario | jobs | terminal | lost | duplicate results | duplicate upstream calls "
        "| calls in flight at the fault | time to recover | succeeded / failed | webhook events expected / delivered "
        "| target |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.error is not None and r.jobs == 0:
            lines.append(f"| {r.scenario} | error: {r.error[:200]} | | | | | | | | | {MISS} |")
            continue
        webhooks = "n/a" if r.webhooks_expected is None else f"{r.webhooks_expected} / {r.webhooks_delivered}"
        lines.append(
            f"| {r.scenario} | {r.jobs:,} | {r.terminal:,} | {r.lost} | {r.duplicate_results} "
            f"| {r.duplicate_upstream} | {r.in_flight_at_fault} | {_cell_recovery(r)} "
            f"| {r.succeeded:,} / {r.failed:,} | {webhooks} | {PASS if r.meets_targets else MISS} |"
        )
    return "\n".join(lines)


def notes(results: Sequence[ScenarioResult], cfg: ChaosConfig) -> str:
    out = []
    for r in results:
        parts = [fault_text(r.scenario, cfg)]
        if r.waiting:
            parts.append("not terminal at the end: " + ", ".join(f"{k} {v}" for k, v in sorted(r.waiting.items())))
        parts += r.notes
        if r.error:
            parts.append(f"error: {r.error}")
        out.append(f"- `{r.scenario}`: " + "; ".join(parts) + ".")
    return "\n".join(out)


def settings_text(cfg: ChaosConfig) -> str:
    env = " ".join(f"{k}={v}" for k, v in cfg.service_env().items() if k != "MMJOBS_RATE_LIMITS")
    return (
        f"Workload: {cfg.describe()}. Settings changed from the defaults for this stack: `{env}` (the lease is "
        f"shortened from 60 s so a killed worker's jobs come back within seconds), and MMJOBS_RATE_LIMITS set to the "
        "simulator's RPM. Private Postgres 15 (fsync off, synchronous_commit on) and redis-server (no persistence) "
        "started by the driver."
    )


def report(results: Sequence[ScenarioResult], cfg: ChaosConfig, *, command: str, started: float) -> str:
    when = now()
    head = (
        f"Measured {when:%Y-%m-%d %H:%M} UTC on {machine()}; 1-minute load average {os.getloadavg()[0]:.1f} at the "
        f"end (above ~2 means other work shared these cores). Command: `{command}` ({(time.time() - started) / 60:.0f}"
        " minutes)."
    )
    return "\n\n".join(
        [
            head,
            settings_text(cfg),
            table(results),
            "Definitions:\n\n" + DEFINITIONS,
            "Per scenario:\n\n" + notes(results, cfg),
        ]
    )


def write_results(body: str) -> Path:
    """Replace (or append) the `chaos` section of RESULTS.md, re-read just before writing; nothing else changes."""
    return write_section("chaos", "Chaos (issue 8)", body)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    missing = missing_tools()
    if missing:
        print(f"cannot run: missing {', '.join(missing)}")  # noqa: T201
        return 2
    cfg = QUICK if args.quick else FULL
    names = args.scenario or list(SCENARIOS)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="mmjobs-chaos-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.chaos" + (" --quick" if args.quick else "")
    command += "".join(f" --scenario {n}" for n in args.scenario or [])
    started = time.time()
    print(f"chaos ({cfg.mode}): {', '.join(names)}; logs in {log_dir}")  # noqa: T201
    print(settings_text(cfg))  # noqa: T201
    results: list[ScenarioResult] = []
    with tempfile.TemporaryDirectory(prefix="mmjobs-chaos-infra-") as tmp, private_infra(Path(tmp), log_dir) as infra:
        print(f"private Postgres on port {infra.postgres.port}, Redis on port {infra.redis.port}")  # noqa: T201
        for name in names:
            print(f"\n== {name}: {fault_text(name, cfg)}", flush=True)  # noqa: T201
            result = run_scenario(name, cfg, infra, log_dir / name)
            results.append(result)
            print(table([result]).splitlines()[-1], flush=True)  # noqa: T201
    body = report(results, cfg, command=command, started=started)
    print("\n" + body)  # noqa: T201
    # A quick run is written only into a file benchmarks.all assembles (which labels it quick), never alone.
    if not args.no_write and (not args.quick or os.environ.get(RESULTS_ENV)):
        print(f"\nwritten to {write_results(body)}")  # noqa: T201
    return 0 if all(r.meets_targets for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
