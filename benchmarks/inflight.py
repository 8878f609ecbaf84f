"""Ten thousand slow calls in flight (issue 17.3): `python -m benchmarks.inflight [--quick] [--no-write]`.

One simulator answering every call after a fixed latency (60 s; --quick 10 s), no rate limits anywhere (the
simulator has none, MMJOBS_RATE_LIMITS far above anything reached, no tenant concurrency cap), N jobs (10,000;
--quick 1,000) submitted as batches to our stack (API, scheduler, 4 worker processes of `--concurrency` call
threads each), then the same N calls through the baseline (benchmarks/inflight_baseline.py: plain Celery, threads
pool of the same size, retries with backoff) against the same simulator.

Measured per side, sampled every second: calls in flight at the simulator (its own peak_in_flight, reset before
each side), the PSS of every worker process and its children summed (PSS, not RSS: forked children share pages),
the simulator's PSS apart, the CPU seconds (user + system) the worker processes spent, the completion time (first
submission to last job terminal) and how every job ended. Wall-clock figures are noisy on a shared machine: the
CPU seconds and the in-flight peak are the figures to compare.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import redis

from benchmarks import inflight_baseline
from benchmarks.report import write_section
from benchmarks.sides import submit_jobs
from benchmarks.stack import (
    REDIS_URL,
    Procs,
    SimSpec,
    create_key,
    flush_redis,
    process_scope,
    reset_simulator,
    start_our_stack,
    start_simulator,
    wait_log,
)

MIB = 1024 * 1024
GIB = 1024 * MIB
TARGET_IN_FLIGHT = 10_000
TARGET_PSS = 4 * GIB
MODEL = "MiniMax-M2.7"
PARAMS = {"max_tokens": 64, "messages": [{"role": "user", "content": "Summarise the contract in one line."}]}
STALL_SECONDS = 180.0


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _pss(procs: list[psutil.Process]) -> int:
    total = 0
    for p in procs:
        try:
            total += int(p.memory_full_info().pss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def _cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def _threads(procs: list[psutil.Process]) -> int:
    total = 0
    for p in procs:
        try:
            total += p.num_threads()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


class Sampler:
    """Every `interval` s: summed PSS and threads of the worker trees, the simulator's PSS, its open calls."""

    def __init__(self, worker_pids: list[int], sim_pid: int, sim_url: str, interval: float = 1.0) -> None:
        self.worker_pids = worker_pids
        self.sim_pid = sim_pid
        self.sim_url = sim_url
        self.interval = interval
        self.peak_pss = 0
        self.peak_sim_pss = 0
        self.peak_threads = 0
        self.peak_sim_open = 0
        self.series: list[dict[str, float]] = []
        self.cpu_start = self._worker_cpu()
        self.cpu_end = self.cpu_start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inflight-sampler", daemon=True)
        self._t0 = time.monotonic()

    def _workers(self) -> list[psutil.Process]:
        return [p for pid in self.worker_pids for p in _tree(pid)]

    def _worker_cpu(self) -> float:
        return _cpu(self._workers())

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def sample(self) -> None:
        workers = self._workers()
        pss, threads = _pss(workers), _threads(workers)
        sim_pss = _pss(_tree(self.sim_pid))
        try:
            open_calls = int(httpx.get(self.sim_url + "/_sim/stats", timeout=10).json().get("in_flight", 0))
        except (httpx.HTTPError, ValueError):
            open_calls = -1
        self.cpu_end = _cpu(workers) if workers else self.cpu_end
        self.peak_pss = max(self.peak_pss, pss)
        self.peak_sim_pss = max(self.peak_sim_pss, sim_pss)
        self.peak_threads = max(self.peak_threads, threads)
        self.peak_sim_open = max(self.peak_sim_open, open_calls)
        self.series.append(
            {
                "t": round(time.monotonic() - self._t0, 1),
                "pss_mib": round(pss / MIB, 1),
                "sim_pss_mib": round(sim_pss / MIB, 1),
                "threads": threads,
                "sim_open": open_calls,
                "cpu_s": round(self.cpu_end - self.cpu_start, 1),
            }
        )

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()


@dataclass
class Side:
    name: str
    jobs: int
    peak_in_flight: int = 0
    peak_pss: int = 0
    peak_sim_pss: int = 0
    peak_threads: int = 0
    worker_cpu: float = 0.0
    completion: float | None = None
    submit_seconds: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    stuck: int = 0
    attempts: int = 0
    sim_requests: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def succeeded(self) -> int:
        return self.statuses.get("succeeded", 0)


def _sim_stats(sim_url: str) -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(sim_url + "/_sim/stats", timeout=30).json()
    return stats


def _wait(expected: int, done: Any, label: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last, last_change, shown = -1, time.monotonic(), 0.0
    while time.monotonic() < deadline:
        n = done()
        if n != last:
            last, last_change = n, time.monotonic()
        if n >= expected:
            return
        if time.monotonic() - last_change > STALL_SECONDS:
            print(f"  [{label}] no job ended for {STALL_SECONDS:g}s: {expected - n} not terminal")  # noqa: T201
            return
        if time.monotonic() - shown > 10:
            shown = time.monotonic()
            print(f"  [{label}] {n}/{expected} terminal", flush=True)  # noqa: T201
        time.sleep(1)
    print(f"  [{label}] timed out after {timeout:g}s")  # noqa: T201


def _finish(side: Side, sampler: Sampler, sim_url: str, log_dir: Path) -> None:
    sampler.sample()
    stats = _sim_stats(sim_url)
    side.peak_in_flight = int(stats.get("peak_in_flight", 0))
    side.sim_requests = int(stats.get("requests_total", 0))
    side.peak_pss = sampler.peak_pss
    side.peak_sim_pss = sampler.peak_sim_pss
    side.peak_threads = sampler.peak_threads
    side.worker_cpu = sampler.cpu_end - sampler.cpu_start
    (log_dir / f"{side.name}-series.jsonl").write_text("\n".join(json.dumps(row) for row in sampler.series) + "\n")
    (log_dir / f"{side.name}-sim-stats.json").write_text(json.dumps(stats, indent=1))


# --- minimax-jobs ------------------------------------------------------------------------------------------


def our_env(concurrency: int) -> dict[str, str]:
    never = json.dumps({MODEL: {"rpm": 10_000_000, "tpm": 100_000_000_000}})
    return {
        "MMJOBS_RATE_LIMITS": never,
        # Every call of the wave published at once (the default 300 keeps the broker queue short for fairness;
        # here the point is to fill 4 x concurrency threads within the 60 s a call lasts).
        "MMJOBS_MAX_UNCLAIMED": str(4 * concurrency),
        "MMJOBS_UPSTREAM_MAX_CONNECTIONS": str(concurrency + 100),
        # Postgres allows 100 connections for everybody on this machine: small pools, claims and finishes queue.
        "MMJOBS_DB_POOL_SIZE": "8",
        "MMJOBS_DB_MAX_OVERFLOW": "0",
    }


_STATUS_SQL = "SELECT status, count(*) FROM jobs GROUP BY status"
_DONE_SQL = "SELECT count(*) FROM jobs WHERE status IN ('succeeded', 'failed', 'canceled', 'expired')"
_SPAN_SQL = "SELECT extract(epoch FROM max(finished_at))::float8 FROM jobs"


def run_ours(procs: Procs, sim_url: str, sim_pid: int, args: argparse.Namespace, log_dir: Path) -> Side:
    side = Side("ours", args.jobs)
    stack = start_our_stack(
        procs,
        sim_url,
        workers=args.workers,
        concurrency=args.concurrency,
        api_workers=1,
        extra_env={**our_env(args.concurrency), **dict(kv.split("=", 1) for kv in args.env)},
    )
    key = create_key(procs, stack.env, "bench-inflight")
    bodies = [{"model": MODEL, "params": PARAMS} for _ in range(args.jobs)]
    reset_simulator(sim_url)
    pids = [p.pid for p in stack.workers]
    with psycopg.connect(stack.dsn, autocommit=True) as db, Sampler(pids, sim_pid, sim_url) as s:
        t0 = time.time()
        failures, first, how = submit_jobs(stack.api_url, key, bodies)
        side.submit_seconds = time.time() - t0
        print(f"  [ours] submitted {args.jobs} via {how} in {side.submit_seconds:.1f}s, {failures} refused")  # noqa: T201
        if first:
            side.notes.append(f"first refusal: {first}")

        def done() -> int:
            row = db.execute(_DONE_SQL).fetchone()
            return int(row[0]) if row else 0

        _wait(args.jobs - failures, done, "ours", timeout=args.latency * 3 + 600)
        _finish(side, s, sim_url, log_dir)
        side.statuses = {str(st): int(n) for st, n in db.execute(_STATUS_SQL).fetchall()}
        side.stuck = args.jobs - sum(side.statuses.get(st, 0) for st in ("succeeded", "failed", "canceled", "expired"))
        last = db.execute(_SPAN_SQL).fetchone()
        side.completion = float(last[0]) - t0 if last and last[0] is not None else None
        attempts = db.execute("SELECT count(*) FROM job_attempts").fetchone()
        side.attempts = int(attempts[0]) if attempts else 0
    procs.stop(list(reversed(procs.procs[1:])))  # everything but the simulator (started first)
    return side


# --- baseline ----------------------------------------------------------------------------------------------


def run_baseline(procs: Procs, sim_url: str, sim_pid: int, args: argparse.Namespace, log_dir: Path) -> Side:
    side = Side("baseline", args.jobs)
    env = {"BENCH_BROKER_URL": REDIS_URL, "BENCH_SIM_URL": sim_url, "BENCH_HTTP_CONNECTIONS": str(args.concurrency)}
    flush_redis()
    inflight_baseline.app.conf.update(broker_url=REDIS_URL)  # this process publishes; workers read BENCH_BROKER_URL
    workers = []
    for i in range(args.workers):
        argv = ["-m", "celery", "-A", "benchmarks.inflight_baseline", "worker", "--pool", "threads"]
        argv += ["--concurrency", str(args.concurrency), "--queues", inflight_baseline.QUEUE, "-n", f"inflight{i}@%h"]
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "INFO"]
        workers.append(procs.start("baseline-worker", argv, env))
    for proc in workers:
        wait_log(proc, b" ready.", timeout=120)
    r = redis.Redis.from_url(REDIS_URL)
    reset_simulator(sim_url)
    with Sampler([p.pid for p in workers], sim_pid, sim_url) as s:
        t0 = time.time()
        side.submit_seconds = inflight_baseline.submit(args.jobs, PARAMS)
        print(f"  [baseline] published {args.jobs} tasks in {side.submit_seconds:.1f}s")  # noqa: T201
        _wait(args.jobs, lambda: inflight_baseline.record_count(r), "baseline", timeout=args.latency * 3 + 600)
        _finish(side, s, sim_url, log_dir)
    records = inflight_baseline.records(r)
    statuses: dict[str, int] = {}
    for rec in records:
        statuses[rec["status"]] = statuses.get(rec["status"], 0) + 1
    side.statuses = statuses
    side.stuck = args.jobs - len({rec["id"] for rec in records})
    side.attempts = side.sim_requests
    ends = [float(rec["ended"]) for rec in records]
    side.completion = max(ends) - t0 if ends else None
    procs.stop(workers)
    return side


# --- the table ---------------------------------------------------------------------------------------------


def _mib(n: int) -> str:
    return f"{n / MIB:,.0f} MiB"


def table(ours: Side, base: Side | None, args: argparse.Namespace) -> str:
    def row(metric: str, target: str, fn: Any) -> str:
        return f"| {metric} | {target} | {fn(ours)} | {fn(base) if base else 'not run'} |"

    def statuses(s: Side) -> str:
        return ", ".join(f"{k} {v:,}" for k, v in sorted(s.statuses.items())) or "none"

    def completion(s: Side) -> str:
        return f"{s.completion:.0f} s" if s.completion is not None else "n/a"

    lines = [
        "| metric | target | minimax-jobs | baseline |",
        "|---|---|---|---|",
        row("peak calls in flight at the simulator", f"{args.jobs:,}", lambda s: f"{s.peak_in_flight:,}"),
        row("jobs succeeded", f"{args.jobs:,}", lambda s: f"{s.succeeded:,}"),
        row("job states at the end", "all succeeded", statuses),
        row("jobs stuck (never terminal)", "0", lambda s: f"{s.stuck:,}"),
        row("calls made (simulator requests)", f"{args.jobs:,}", lambda s: f"{s.sim_requests:,}"),
        row(f"peak PSS, {args.workers} worker processes summed", "< 4 GiB", lambda s: _mib(s.peak_pss)),
        row("peak PSS per worker thread", "", lambda s: f"{s.peak_pss / max(1, s.peak_threads) / 1024:,.0f} KiB"),
        row("peak threads, worker processes", "", lambda s: f"{s.peak_threads:,}"),
        row("peak PSS, simulator (apart)", "", lambda s: _mib(s.peak_sim_pss)),
        row("CPU of the worker processes (user + system)", "", lambda s: f"{s.worker_cpu:,.0f} s"),
        row("completion (first submission to last job terminal)", f"~{args.latency:g} s + ramp", completion),
        row("submission", "", lambda s: f"{s.submit_seconds:.1f} s"),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.inflight", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1,000 jobs, 10 s latency, 250 threads per worker")
    p.add_argument("--jobs", type=int, help="jobs (calls) per side (default 10,000)")
    p.add_argument("--latency", type=float, help="simulated seconds per call (default 60)")
    p.add_argument("--workers", type=int, default=4, help="worker processes per side")
    p.add_argument("--concurrency", type=int, help="call threads per worker process (default jobs / workers)")
    p.add_argument("--no-baseline", action="store_true", help="measure our side only")
    p.add_argument("--env", action="append", default=[], metavar="MMJOBS_X=V", help="extra setting for our side")
    p.add_argument("--log-dir", type=Path, help="where process logs go (default: a new directory in /tmp)")
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = p.parse_args(argv)
    args.jobs = args.jobs or (1_000 if args.quick else TARGET_IN_FLIGHT)
    args.latency = args.latency or (10.0 if args.quick else 60.0)
    args.concurrency = args.concurrency or -(-args.jobs // args.workers)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="mmjobs-inflight-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    print(  # noqa: T201
        f"inflight: {args.jobs:,} calls of {args.latency:g} s, {args.workers} workers x {args.concurrency} threads; "
        f"logs in {log_dir}",
        flush=True,
    )
    started = time.time()
    with process_scope(log_dir) as procs:
        sim_url = start_simulator(procs, SimSpec(latency=f"{args.latency:g}", rpm=None, tpm=None))
        sim_pid = procs.procs[0].pid
        ours = run_ours(procs, sim_url, sim_pid, args, log_dir)
        base = None if args.no_baseline else run_baseline(procs, sim_url, sim_pid, args, log_dir)
    text = table(ours, base, args)
    load = psutil.getloadavg()
    note = (
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}: {args.jobs:,} calls of {args.latency:g} s "
        f"(simulator, no rate limits), {args.workers} worker processes x {args.concurrency} call threads per side, "
        f"{psutil.cpu_count()} cores shared with other work (load average at the end {load[0]:.1f}). "
        "minimax-jobs: POST /v1/batches, scheduler, Celery threads workers (one thread per call, reads block until "
        "data or a stop: no polling). Baseline: benchmarks/inflight_baseline.py (plain Celery threads pool, same "
        "size, acks_late, retries with backoff). PSS sampled every second, summed over each side's worker "
        "processes and their children; the simulator's apart."
    )
    if args.env:
        note += f" Settings changed on our side: {', '.join(args.env)}."
    notes = [f"- {s.name}: {n}" for s in (ours, base) if s is not None for n in s.notes]
    out = "\n".join([text, "", note, *notes])
    print(out)  # noqa: T201
    if not args.no_write:
        path = write_section("inflight", "Ten thousand calls in flight (issue 17.3)", out)
        print(f"written to {path}")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
