"""`python -m benchmarks.run [--scenario NAME ...] [--quick]`: the full-stack benchmark of issue 3.

Per scenario: a simulator with the scenario's latency, limits and faults; then our stack (fresh database, API,
scheduler, N workers) runs the workload; the simulator is reset; then the baseline (plain Celery, threads pool,
rate_limit, retries with backoff) runs the same workload. One table per scenario is printed and written to
benchmarks/RESULTS.md.
Every process started is stopped at the end, also on Ctrl-C, SIGTERM or an error.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from benchmarks.metrics import Figures
from benchmarks.report import Side, now, section, write_results
from benchmarks.scenarios import NAMES, Scenario, build
from benchmarks.sides import run_baseline, run_ours
from benchmarks.stack import process_scope, reset_simulator, start_simulator


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    p.add_argument("--scenario", action="append", choices=NAMES, help="run only this scenario (repeatable)")
    p.add_argument("--quick", action="store_true", help="small sizes and short latencies (a few minutes)")
    p.add_argument("--side", choices=("both", "ours", "baseline"), default="both", help="which side(s) to run")
    p.add_argument("--api-workers", type=int, default=1, help="uvicorn worker processes for our API")
    p.add_argument(
        "--single-jobs", action="store_true", help="submit with POST /v1/jobs even if POST /v1/batches exists"
    )
    p.add_argument("--log-dir", type=Path, help="where process logs go (default: a new directory in /tmp)")
    p.add_argument("--no-write", action="store_true", help="print the tables only; leave RESULTS.md alone")
    return p


def _terminate(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM/SIGHUP into the same unwinding as Ctrl-C, so every `finally` stops its processes.
    raise KeyboardInterrupt(f"signal {signum}")


def _side(label: str, run: bool, fn: Callable[[], Figures]) -> Side:
    if not run:
        return Side(skipped=True)
    print(f"- {label}", flush=True)  # noqa: T201
    t0 = time.monotonic()
    try:
        figures = fn()
    except Exception as exc:  # one side failing must not lose the other's figures
        traceback.print_exc()
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        message = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
        return Side(error=message.replace("|", "/")[:300])
    print(f"  [{label}] done in {time.monotonic() - t0:.0f}s", flush=True)  # noqa: T201
    return Side(figures=figures)


def run_scenario(s: Scenario, *, side: str, api_workers: int, batches: bool, log_dir: Path) -> str:
    print(f"\n== {s.title} ({s.name}, {s.mode}): {s.describe()}", flush=True)  # noqa: T201
    scenario_logs = log_dir / f"{s.name}-{s.mode}"
    scenario_logs.mkdir(parents=True, exist_ok=True)
    when = now()
    load_before = os.getloadavg()[0]
    with process_scope(scenario_logs) as procs:
        sim_url = start_simulator(procs, s.sim)
        ours = _side(
            "minimax-jobs",
            side in ("both", "ours"),
            lambda: run_ours(s, sim_url, scenario_logs, api_workers=api_workers, batches=batches),
        )
        reset_simulator(sim_url)
        base = _side(
            "baseline",
            side in ("both", "baseline"),
            lambda: run_baseline(s, sim_url, scenario_logs, batches=batches),
        )
    text = section(s, ours, base, when, load=(load_before, os.getloadavg()[0]))
    print("\n" + text + "\n", flush=True)  # noqa: T201
    return text


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    names = args.scenario or list(NAMES)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="mmjobs-bench-"))
    print(f"process logs: {log_dir}", flush=True)  # noqa: T201
    sections: dict[str, str] = {}
    try:
        for name in names:
            s = build(name, quick=args.quick)
            sections[f"{s.name}/{s.mode}"] = run_scenario(
                s, side=args.side, api_workers=args.api_workers, batches=not args.single_jobs, log_dir=log_dir
            )
    except KeyboardInterrupt:
        print("\ninterrupted: every process started was stopped", file=sys.stderr)  # noqa: T201
        return 130
    finally:
        if sections and not args.no_write:
            full_run = not args.quick and args.scenario is None and args.side == "both"
            path = write_results(sections, replace_all=full_run)
            print(f"wrote {path}")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
