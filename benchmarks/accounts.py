"""`python -m benchmarks.accounts [--quick] [--seconds 200] [--no-write]`: several upstream accounts (issue 17.2).

Three simulator processes stand for three MiniMax accounts of 300 RPM each (the simulator limits per key, as MiniMax
does per account). Two runs per side, each on fresh simulators:

1. throughput: a backlog larger than 900 RPM can drain; over `--seconds` from the first call (>= 3 limiter windows
   by default), successful upstream calls per minute as a share of 900, and the 429s the simulators answered;
2. failover: a workload of one minute at 900 RPM; a third of the way in, account 1 starts answering 1004 (not
   authorized) to every call. Every job must end, and succeed: none lost, none failed.

minimax-jobs: the service (API, scheduler, one worker) configured with MMJOBS_UPSTREAM_ACCOUNTS, the three accounts
at 300 RPM each. Baseline: what a user builds without it: plain Celery (benchmarks/baseline.py), one prefork worker
per account pinned to that account's URL and key, each with `rate_limit="300/m"`, all consuming one queue (the
broker hands tasks round-robin to whichever worker has room). Written to benchmarks/RESULTS.md as its own section
(`--no-write` to print only). Wall-clock figures on a shared machine are noisy; the 429 and lost-job counts are not.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import psycopg
import redis

from benchmarks import baseline
from benchmarks.report import write_section
from benchmarks.stack import (
    REDIS_URL,
    SIM_KEY,
    Procs,
    SimSpec,
    create_key,
    flush_redis,
    process_scope,
    start_our_stack,
    start_simulator,
    wait_log,
)

MODEL = "MiniMax-M2.7"
ACCOUNTS = 3
RPM = 300
LATENCY = "0.3-0.8"
CONCURRENCY = 60


@dataclass
class RunFigures:
    rpm: float = 0.0
    calls_429: int = 0
    jobs: int = 0
    succeeded: int = 0
    failed: int = 0
    lost: int = 0  # never ended (or, in the baseline, never recorded)
    refused_1004: int = 0
    notes: list[str] = field(default_factory=list)


def params(i: int) -> dict[str, Any]:
    return {"max_tokens": 64, "messages": [{"role": "user", "content": f"account bench job {i}"}]}


def start_sims(procs: Procs) -> list[str]:
    return [start_simulator(procs, SimSpec(latency=LATENCY, rpm=RPM, tpm=None)) for _ in range(ACCOUNTS)]


def ledgers(urls: list[str]) -> list[list[dict[str, Any]]]:
    return [httpx.get(u + "/_sim/ledger", timeout=30).json()["entries"] for u in urls]


def count_429(urls: list[str]) -> int:
    return sum(int(httpx.get(u + "/_sim/stats", timeout=10).json()["rate_limited"]) for u in urls)


def achieved_rpm(urls: list[str], seconds: float) -> float:
    """Successful calls per minute over `seconds` from the first call any simulator billed."""
    times = sorted(
        datetime.fromisoformat(e["at"]).timestamp()
        for entries in ledgers(urls)
        for e in entries
        if e.get("outcome") == "succeeded"
    )
    if not times:
        return 0.0
    start = times[0]
    inside = sum(1 for t in times if t <= start + seconds)
    return inside / (seconds / 60)


def fail_account(url: str) -> None:
    body = {"faults": "base_resp=1", "base_resp_code": 1004}
    httpx.post(url + "/_sim/config", json=body, timeout=10).raise_for_status()


# --- minimax-jobs --------------------------------------------------------------------------------------------


def _ours(procs: Procs, urls: list[str]) -> tuple[str, str, str]:
    listing = [
        {"name": f"acct{i + 1}", "api_key": SIM_KEY, "base_url": u, "rate_limits": {MODEL: {"rpm": RPM}}}
        for i, u in enumerate(urls)
    ]
    extra = {"MMJOBS_UPSTREAM_ACCOUNTS": json.dumps(listing), "MMJOBS_ACCOUNT_PROBE_SECONDS": "5"}
    stack = start_our_stack(procs, urls[0], workers=1, concurrency=CONCURRENCY, api_workers=1, extra_env=extra)
    key = create_key(procs, stack.env, "bench")
    return stack.api_url, stack.dsn.replace("postgresql+psycopg", "postgresql"), key


def _submit_ours(api_url: str, key: str, n: int) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=api_url, headers=headers, timeout=300) as client:
        for start in range(0, n, 1000):
            requests = [
                {"custom_id": f"r{i}", "model": MODEL, "params": params(i)} for i in range(start, min(n, start + 1000))
            ]
            r = client.post("/v1/batches", json={"requests": requests})
            r.raise_for_status()


def _statuses(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as db:
        return {s: int(n) for s, n in db.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall()}


def ours_throughput(log_dir: Path, seconds: float) -> RunFigures:
    with process_scope(log_dir) as procs:
        urls = start_sims(procs)
        api_url, _, key = _ours(procs, urls)
        n = math.ceil(ACCOUNTS * RPM * seconds / 60 * 1.15)
        _submit_ours(api_url, key, n)
        _wait_first_call(urls)
        time.sleep(seconds + 2)
        return RunFigures(rpm=achieved_rpm(urls, seconds), calls_429=count_429(urls), jobs=n)


def ours_failover(log_dir: Path, seconds: float) -> RunFigures:
    with process_scope(log_dir) as procs:
        urls = start_sims(procs)
        api_url, dsn, key = _ours(procs, urls)
        n = math.ceil(ACCOUNTS * RPM * seconds / 60)
        _submit_ours(api_url, key, n)
        _wait_first_call(urls)
        time.sleep(seconds / 3)
        fail_account(urls[0])
        print("  [minimax-jobs] account 1 now answers 1004", flush=True)  # noqa: T201
        deadline = time.monotonic() + seconds * 4 + 60
        while time.monotonic() < deadline:
            counts = _statuses(dsn)
            done = sum(counts.get(s, 0) for s in ("succeeded", "failed", "canceled", "expired"))
            if done >= n:
                break
            time.sleep(1)
        counts = _statuses(dsn)
        with psycopg.connect(dsn) as db:
            refused = db.execute("SELECT count(*) FROM job_attempts WHERE minimax_code = 1004").fetchone()
        done = sum(counts.get(s, 0) for s in ("succeeded", "failed", "canceled", "expired"))
        return RunFigures(
            calls_429=count_429(urls),
            jobs=n,
            succeeded=counts.get("succeeded", 0),
            failed=done - counts.get("succeeded", 0),
            lost=n - done,
            refused_1004=int(refused[0]) if refused else 0,
        )


def _wait_first_call(urls: list[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(ledgers([u])[0] for u in urls):
            return
        time.sleep(0.2)


# --- the baseline ---------------------------------------------------------------------------------------------


def _baseline_workers(procs: Procs, urls: list[str]) -> None:
    flush_redis()
    baseline.app.conf.update(broker_url=REDIS_URL)  # the runner publishes where the workers consume
    started = []
    for i, url in enumerate(urls):
        env = {"BENCH_BROKER_URL": REDIS_URL, "BENCH_SIM_URL": url, "BENCH_RATE_LIMIT": f"{RPM}/m"}
        argv = ["-m", "celery", "-A", "benchmarks.baseline", "worker", "--pool", "prefork"]
        argv += ["--concurrency", "16", "--queues", baseline.QUEUE, "-n", f"acct{i}@%h"]
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "INFO"]
        started.append(procs.start(f"baseline-acct{i + 1}", argv, env))
    for proc in started:
        wait_log(proc, b" ready.", timeout=120)


def baseline_throughput(log_dir: Path, seconds: float) -> RunFigures:
    with process_scope(log_dir) as procs:
        urls = start_sims(procs)
        _baseline_workers(procs, urls)
        n = math.ceil(ACCOUNTS * RPM * seconds / 60 * 1.15)
        baseline.submit([(f"j{i}", "bench", params(i)) for i in range(n)])
        _wait_first_call(urls)
        time.sleep(seconds + 2)
        return RunFigures(rpm=achieved_rpm(urls, seconds), calls_429=count_429(urls), jobs=n)


def baseline_failover(log_dir: Path, seconds: float) -> RunFigures:
    with process_scope(log_dir) as procs:
        urls = start_sims(procs)
        _baseline_workers(procs, urls)
        n = math.ceil(ACCOUNTS * RPM * seconds / 60)
        baseline.submit([(f"j{i}", "bench", params(i)) for i in range(n)])
        _wait_first_call(urls)
        time.sleep(seconds / 3)
        fail_account(urls[0])
        print("  [baseline] account 1 now answers 1004", flush=True)  # noqa: T201
        r = redis.Redis.from_url(REDIS_URL)
        deadline = time.monotonic() + seconds * 4 + 60
        while time.monotonic() < deadline and baseline.record_count(r) < n:
            time.sleep(1)
        records = baseline.records(r)
        # MiniMax reports 1004 as HTTP 200 with `base_resp` and no answer: the plain task takes the 200 for a
        # success. A job counts as succeeded only with an answer (output tokens), as on our side.
        succeeded = sum(1 for rec in records if rec["status"] == "succeeded" and rec.get("output_tokens", 0) > 0)
        return RunFigures(
            calls_429=count_429(urls),
            jobs=n,
            succeeded=succeeded,
            failed=len(records) - succeeded,
            lost=n - len(records),
        )


# --- report ---------------------------------------------------------------------------------------------------


def report(
    ours: tuple[RunFigures, RunFigures],
    base: tuple[RunFigures, RunFigures],
    seconds: float,
    failover: float,
    command: str,
) -> str:
    (ot, of), (bt, bf) = ours, base
    target = ACCOUNTS * RPM

    def pct(f: RunFigures) -> str:
        return f"{f.rpm:.0f} RPM ({100 * f.rpm / target:.1f} %)"

    def ended(f: RunFigures) -> str:
        return f"{f.succeeded} / {f.jobs} succeeded, {f.failed} failed, {f.lost} never ended"

    rows = [
        ("achieved rate, 3 accounts x 300 RPM", ">= 97 % of 900 RPM", pct(ot), pct(bt)),
        ("upstream 429s (throughput run)", "0", str(ot.calls_429), str(bt.calls_429)),
        ("jobs, one account answering 1004 from 1/3 in", "all succeeded", ended(of), ended(bf)),
        ("upstream 429s (failover run)", "0", str(of.calls_429), str(bf.calls_429)),
        ("calls refused with 1004 (then retried elsewhere)", "-", str(of.refused_1004), "-"),
    ]
    lines = [
        f"`{command}` — three simulator processes, each one account limited to {RPM} RPM per key (MiniMax's "
        f"per-account limit), latency {LATENCY} s. Throughput over {seconds:g} s from the first call "
        f"(>= 3 limiter windows unless --quick); failover: {ACCOUNTS * RPM * failover / 60:.0f} jobs "
        f"({failover:g} s at 900 RPM), account 1 answering 1004 to every call from a third of the way in.",
        "",
        "Baseline: plain Celery (benchmarks/baseline.py), one prefork worker per account pinned to its URL and key "
        "with `rate_limit='300/m'`, one shared queue: the setup a user builds for several keys without this service. "
        "Our side: API + scheduler + one worker with MMJOBS_UPSTREAM_ACCOUNTS (three accounts, 300 RPM each).",
        "",
        "| metric | target | minimax-jobs | baseline |",
        "|---|---|---|---|",
        *(f"| {m} | {t} | {o} | {b} |" for m, t, o, b in rows),
        "",
        "Succeeded means an answer came back (the baseline's task takes MiniMax's HTTP 200 carrying "
        "`base_resp` 1004 for a success; those are counted failed here). Noisy machine (2 cores shared with other "
        "work): the rate is wall-clock and may read low; the 429 and job counts do not depend on it.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.accounts", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="70 s of throughput, 30 s of failover workload")
    p.add_argument("--seconds", type=float, help="throughput measured over (default 200: >3 windows of 61 s)")
    p.add_argument("--failover-seconds", type=float, help="failover workload at 900 RPM (default 60; --quick 30)")
    p.add_argument("--log-dir", type=Path)
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = p.parse_args(argv)
    seconds = args.seconds or (70.0 if args.quick else 200.0)
    failover = args.failover_seconds or (30.0 if args.quick else 60.0)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="mmjobs-bench-accounts-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.accounts " + " ".join(argv if argv is not None else sys.argv[1:])
    signal.signal(signal.SIGTERM, _terminate)
    print("minimax-jobs: throughput", flush=True)  # noqa: T201
    ot = ours_throughput(log_dir / "ours-throughput", seconds) if _mk(log_dir / "ours-throughput") else RunFigures()
    print("minimax-jobs: failover", flush=True)  # noqa: T201
    of = ours_failover(log_dir / "ours-failover", failover) if _mk(log_dir / "ours-failover") else RunFigures()
    print("baseline: throughput", flush=True)  # noqa: T201
    bt = baseline_throughput(log_dir / "base-throughput", seconds) if _mk(log_dir / "base-throughput") else RunFigures()
    print("baseline: failover", flush=True)  # noqa: T201
    bf = baseline_failover(log_dir / "base-failover", failover) if _mk(log_dir / "base-failover") else RunFigures()
    text = report((ot, of), (bt, bf), seconds, failover, command.strip())
    print("\n" + text + f"\n\nProcess logs: {log_dir}")  # noqa: T201
    if not args.no_write:
        path = write_section("accounts", "Several upstream accounts (issue 17.2)", text)
        print(f"written to {path}")  # noqa: T201
    return 0


def _mk(path: Path) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return True


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    sys.exit(main())
