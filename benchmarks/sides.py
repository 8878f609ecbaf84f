"""Running one scenario against each side: minimax-jobs (REST intake -> Postgres -> scheduler -> Celery threads
workers) and the baseline (plain Celery, threads pool, rate_limit, retries with backoff), both against the same
simulator."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

from benchmarks import baseline
from benchmarks.metrics import TERMINAL, Figures, JobTiming, MemorySampler, compute, sim_figures
from benchmarks.scenarios import MODEL, Scenario
from benchmarks.stack import (
    REDIS_URL,
    create_key,
    process_scope,
    reset_simulator,
    start_baseline_workers,
    start_our_stack,
)

RETRYABLE_CLASSES = ("retryable", "rate_limited", "lease_expired")
STALL_SECONDS = 150.0  # no job ended and no attempt started for this long: the rest count as stuck
SUBMIT_CLIENTS = 8
SUBMIT_CONCURRENCY = 48
BATCH_CHUNK = 1000


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    signature: tuple[int, ...]


def wait_done(
    expected: int,
    poll: Callable[[], Progress],
    *,
    timeout: float,
    on_tick: Callable[[], None] = lambda: None,
    label: str,
) -> None:
    """Poll until `expected` jobs are terminal, nothing moved for STALL_SECONDS, or `timeout` passed."""
    deadline = time.monotonic() + timeout
    last_change = time.monotonic()
    last: tuple[int, ...] = ()
    shown = 0.0
    while time.monotonic() < deadline:
        on_tick()
        p = poll()
        if p.signature != last:
            last, last_change = p.signature, time.monotonic()
        if p.done >= expected:
            return
        if time.monotonic() - last_change > STALL_SECONDS:
            print(f"  [{label}] no progress for {STALL_SECONDS:g}s: {expected - p.done} jobs not terminal")  # noqa: T201
            return
        if time.monotonic() - shown > 15:
            shown = time.monotonic()
            print(f"  [{label}] {p.done}/{expected} terminal ({p.total} seen)", flush=True)  # noqa: T201
        time.sleep(0.5)
    print(f"  [{label}] timed out after {timeout:g}s")  # noqa: T201


def dump(log_dir: Path, side: str, timings: list[JobTiming], sim_url: str) -> None:
    """Keep the raw material beside the logs: per-job timings, and the simulator's stats and ledger."""
    with (log_dir / f"{side}-timings.jsonl").open("w") as f:
        for t in timings:
            f.write(json.dumps(asdict(t)) + "\n")
    for name in ("stats", "ledger"):
        body = httpx.get(f"{sim_url}/_sim/{name}", timeout=60).text
        (log_dir / f"{side}-sim-{name}.json").write_text(body)


_ATTEMPTS_SQL = """
SELECT job_id, number, extract(epoch FROM started_at)::float8, extract(epoch FROM ended_at)::float8,
       http_status, classification, error_type
FROM job_attempts ORDER BY started_at
"""


def _dump_attempts(db: psycopg.Connection[Any], log_dir: Path) -> None:
    keys = ("job_id", "number", "started", "ended", "http_status", "classification", "error_type")
    with (log_dir / "ours-attempts.jsonl").open("w") as f:
        for row in db.execute(_ATTEMPTS_SQL):
            f.write(json.dumps(dict(zip(keys, row, strict=True))) + "\n")


# --- minimax-jobs ------------------------------------------------------------------------------------------


def _limits_env(s: Scenario) -> str:
    # Our limiter is told the simulator's limits; "no limit" scenarios get limits nothing will reach.
    rpm = s.sim.rpm or 1_000_000
    tpm = s.sim.tpm or 10_000_000_000
    return f'{{"{MODEL}": {{"rpm": {rpm}, "tpm": {tpm}}}}}'


async def _submit_async(api_url: str, key: str, bodies: list[dict[str, Any]]) -> tuple[int, str]:
    """POST every body to /v1/jobs from a pool of clients; returns (failures, first failure text)."""
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=SUBMIT_CONCURRENCY // SUBMIT_CLIENTS + 1)
    clients = [
        httpx.AsyncClient(base_url=api_url, headers=headers, timeout=120, limits=limits) for _ in range(SUBMIT_CLIENTS)
    ]
    todo = iter(bodies)
    failures: list[str] = []

    async def lane(client: httpx.AsyncClient) -> None:
        for body in todo:
            for attempt in range(6):
                try:
                    r = await client.post("/v1/jobs", json=body)
                except httpx.HTTPError as exc:
                    text = repr(exc)
                else:
                    if r.status_code == 202:
                        break
                    text = f"{r.status_code} {r.text[:300]}"
                    if r.status_code not in (429, 500, 502, 503, 504):
                        failures.append(text)
                        break
                await asyncio.sleep(0.5 * (attempt + 1))
            else:
                failures.append(text)

    try:
        await asyncio.gather(*(lane(clients[i % SUBMIT_CLIENTS]) for i in range(SUBMIT_CONCURRENCY)))
    finally:
        for c in clients:
            await c.aclose()
    return len(failures), failures[0] if failures else ""


def _has_batches(api_url: str) -> bool:
    try:
        paths = httpx.get(api_url + "/openapi.json", timeout=10).json().get("paths", {})
    except (httpx.HTTPError, ValueError):
        return False
    return "post" in paths.get("/v1/batches", {})


def _submit_batches(api_url: str, key: str, bodies: list[dict[str, Any]]) -> tuple[int, str] | None:
    """POST /v1/batches in chunks; None if the endpoint refuses the first chunk (then we fall back)."""
    headers = {"Authorization": f"Bearer {key}"}
    failed, first = 0, ""
    with httpx.Client(base_url=api_url, headers=headers, timeout=300) as client:
        for n, start in enumerate(range(0, len(bodies), BATCH_CHUNK)):
            chunk = bodies[start : start + BATCH_CHUNK]
            requests = [{"custom_id": f"r{start + i}", **b} for i, b in enumerate(chunk)]
            r = client.post("/v1/batches", json={"requests": requests})
            if r.status_code >= 300:
                if n == 0:
                    print(f"  POST /v1/batches answered {r.status_code}; submitting jobs one by one")  # noqa: T201
                    return None
                failed += len(chunk)
                first = first or f"{r.status_code} {r.text[:300]}"
    return failed, first


def submit_jobs(api_url: str, key: str, bodies: list[dict[str, Any]], *, batches: bool = True) -> tuple[int, str, str]:
    """(failures, first failure, how) — through /v1/batches if the API has it, else /v1/jobs one by one."""
    if batches and len(bodies) > 1 and _has_batches(api_url):
        outcome = _submit_batches(api_url, key, bodies)
        if outcome is not None:
            return *outcome, "POST /v1/batches"
    return *asyncio.run(_submit_async(api_url, key, bodies)), "POST /v1/jobs"


_PROGRESS_SQL = """
SELECT count(*) FILTER (WHERE status IN ('succeeded', 'failed', 'canceled', 'expired')),
       count(*),
       (SELECT count(*) FROM job_attempts)
FROM jobs
"""
_TIMINGS_SQL = """
SELECT t.name, j.status, extract(epoch FROM j.created_at)::float8, extract(epoch FROM j.started_at)::float8,
       extract(epoch FROM j.finished_at)::float8, j.attempt_count, j.error->>'classification'
FROM jobs j JOIN tenants t ON t.id = j.tenant_id
"""


def run_ours(s: Scenario, sim_url: str, log_dir: Path, *, api_workers: int, batches: bool = True) -> Figures:
    with process_scope(log_dir) as procs:
        stack = start_our_stack(
            procs,
            sim_url,
            workers=s.workers,
            concurrency=s.concurrency,
            api_workers=api_workers,
            extra_env={"MMJOBS_RATE_LIMITS": _limits_env(s)},
        )
        key_a = create_key(procs, stack.env, "bench-a")
        key_b = create_key(procs, stack.env, "bench-b") if s.probe_after is not None else ""
        bodies = [{"model": MODEL, "params": s.params(i)} for i in range(s.jobs)]
        expected = s.jobs + (1 if s.probe_after is not None else 0)
        reset_simulator(sim_url)
        with (
            psycopg.connect(stack.dsn, autocommit=True) as db,
            MemorySampler(p.pid for p in stack.workers) as memory,
        ):
            submit_started = time.time()
            failures, first_failure, how = submit_jobs(stack.api_url, key_a, bodies, batches=batches)
            submit_seconds = time.time() - submit_started
            print(f"  [ours] submitted {s.jobs} via {how} in {submit_seconds:.1f}s, {failures} refused")  # noqa: T201
            if first_failure:
                print(f"  [ours] first refusal: {first_failure}")  # noqa: T201
            probe_at = time.monotonic() + (s.probe_after or 0)
            probe_pending = s.probe_after is not None

            def probe() -> None:
                nonlocal probe_pending
                if probe_pending and time.monotonic() >= probe_at:
                    probe_pending = False
                    body = {"model": MODEL, "params": s.params(0, tenant="b")}
                    r = httpx.post(
                        stack.api_url + "/v1/jobs",
                        json=body,
                        headers={"Authorization": f"Bearer {key_b}"},
                        timeout=30,
                    )
                    print(f"  [ours] tenant B job submitted: {r.status_code}")  # noqa: T201

            def poll() -> Progress:
                row = db.execute(_PROGRESS_SQL).fetchone()
                assert row is not None
                return Progress(done=int(row[0]), total=int(row[1]), signature=(int(row[0]), int(row[2])))

            wait_done(expected - failures, poll, timeout=s.wait_timeout, on_tick=probe, label="ours")
            memory.sample()
            rows = db.execute(_TIMINGS_SQL).fetchall()
            attempts_row = db.execute("SELECT count(*) FROM job_attempts").fetchone()
            _dump_attempts(db, log_dir)
        timings = [
            JobTiming(
                tenant=str(r[0]).removeprefix("bench-"),
                status=str(r[1]),
                created=float(r[2]),
                started=r[3],
                ended=r[4] if r[1] in TERMINAL else None,
                attempts=int(r[5]),
                retryable_failure=r[6] in RETRYABLE_CLASSES,
            )
            for r in rows
        ]
        dump(log_dir, "ours", timings, sim_url)
        sim = sim_figures(sim_url)
        figures = compute(
            timings,
            submit_started=submit_started,
            submit_seconds=submit_seconds,
            ideal_seconds=s.ideal_seconds(),
            mean_latency=s.latency_mean,
            sim=sim,
            memory=memory,
            attempts=int(attempts_row[0]) if attempts_row else 0,
            submit_errors=failures,
            limited=s.limited,
            latency_spread=s.latency_spread,
        )
        figures.extra["submitted_via"] = how
        return figures


# --- baseline ----------------------------------------------------------------------------------------------


def run_baseline(s: Scenario, sim_url: str, log_dir: Path, *, batches: bool = True) -> Figures:
    """The same workload through plain Celery (benchmarks/baseline.py): published from one producer when ours submits
    a batch (`batches`), one task at a time otherwise."""
    env = {
        "BENCH_BROKER_URL": REDIS_URL,
        "BENCH_SIM_URL": sim_url,
        "BENCH_RATE_LIMIT": s.baseline_rate_limit() or "",
    }
    with process_scope(log_dir) as procs:
        workers = start_baseline_workers(procs, env, workers=s.workers, concurrency=s.baseline_concurrency)
        r = redis.Redis.from_url(REDIS_URL)
        jobs = [(f"a{i}", "a", s.params(i)) for i in range(s.jobs)]
        expected = s.jobs + (1 if s.probe_after is not None else 0)
        reset_simulator(sim_url)
        with MemorySampler(p.pid for p in workers) as memory:
            submit_started = time.time()
            submit_seconds = baseline.submit(jobs, bulk=batches)
            how = "one producer, one loop" if batches else "one apply_async per task"
            print(f"  [baseline] published {s.jobs} tasks ({how}) in {submit_seconds:.1f}s")  # noqa: T201
            probe_at = time.monotonic() + (s.probe_after or 0)
            probe_pending = s.probe_after is not None

            def probe() -> None:
                nonlocal probe_pending
                if probe_pending and time.monotonic() >= probe_at:
                    probe_pending = False
                    baseline.submit([("b0", "b", s.params(0, tenant="b"))])
                    print("  [baseline] tenant B task published")  # noqa: T201

            def poll() -> Progress:
                n = baseline.record_count(r)
                return Progress(done=n, total=expected, signature=(n, baseline.attempt_count(r)))

            wait_done(expected, poll, timeout=s.wait_timeout, on_tick=probe, label="baseline")
            memory.sample()
        records = baseline.records(r)
        attempts = baseline.attempts(r)
        with (log_dir / "baseline-attempts.jsonl").open("w") as f:
            for a in attempts:
                f.write(json.dumps(a) + "\n")
        seen = {rec["id"] for rec in records}
        timings = [
            JobTiming(
                tenant=str(rec["tenant"]),
                status=str(rec["status"]),
                created=float(rec["submitted"]),
                started=float(rec["started"]),
                ended=float(rec["ended"]),
                attempts=int(rec.get("attempts", 1)),
                retryable_failure=rec["status"] == "failed" and bool(rec.get("retryable")),
            )
            for rec in records
        ]
        all_ids = itertools.chain((j[0] for j in jobs), ["b0"] if s.probe_after is not None else [])
        timings += [
            JobTiming(tenant=i[0], status="stuck", created=submit_started, started=None, ended=None)
            for i in all_ids
            if i not in seen
        ]
        dump(log_dir, "baseline", timings, sim_url)
        sim = sim_figures(sim_url)
        figures = compute(
            timings,
            submit_started=submit_started,
            submit_seconds=submit_seconds,
            ideal_seconds=s.ideal_seconds(),
            mean_latency=s.latency_mean,
            sim=sim,
            memory=memory,
            attempts=len(attempts),
            limited=s.limited,
            latency_spread=s.latency_spread,
        )
        figures.extra["submitted_via"] = how
        return figures
