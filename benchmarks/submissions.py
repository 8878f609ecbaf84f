"""Single submissions (issue 17.1, the intake half): `POST /v1/jobs` per second from 8 clients, with the CPU
milliseconds and SQL statements each submission costs, for this commit and for a baseline commit in the same run.

    .venv/bin/python -m benchmarks.submissions [--seconds 20] [--clients 8] [--api-workers N] [--baseline 0655891]
                                               [--no-baseline]

Each side runs against a private Postgres cluster (initdb, `shared_preload_libraries=pg_stat_statements`) and a
private redis-server, both started here (benchmarks/chaos/infra.py), in a fresh database of its own; only the API
runs (no scheduler, no workers), so every statement Postgres counts is the intake's. The baseline is the commit
checked out with `git worktree add` into a temporary directory; its API runs with that directory as working
directory and on PYTHONPATH (checked: its `service` package is imported from there, not from this checkout).

Figures per side, after a short warm-up:
- submissions/s: 202 answers per second, `clients` threads each with its own httpx client (one keep-alive
  connection) posting a small chat request in a loop;
- p50 / p99 latency of those requests, as the clients saw them;
- CPU ms per submission: user + system CPU of the API processes (the uvicorn parent and its workers) and of the
  Postgres cluster (the postmaster, its live children, and children it reaped meanwhile), divided by the 202s;
- SQL statements per submission: the sum of pg_stat_statements `calls` of top-level statements in the side's
  database (each one a round trip; BEGIN and COMMIT included: track_utility is on), reset just before the measured
  window; the statements Postgres runs inside them (the foreign-key checks of an INSERT) on a line of their own.

On a shared 2-core machine the wall-clock figures (submissions/s, latency) move with whatever else runs; CPU ms
and statements per submission are the figures to compare.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import psycopg

from benchmarks.chaos.infra import PrivateRedis
from benchmarks.overhead import (
    CodeProc,
    CountingPostgres,
    _Client,
    _cpu_seconds,
    _loop,
    _run,
    baseline_checkout,
)
from benchmarks.stack import ROOT, Procs, StackError, free_port, process_scope, wait_http

BASELINE = "0655891"
DATABASE = "mmjobs_bench_submissions"
TARGET_PER_SECOND = 300
BODY = {
    "model": "MiniMax-M2.7",
    "params": {
        "max_tokens": 256,
        "messages": [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "Summarise the plot of Hamlet in three sentences."},
        ],
    },
    "metadata": {"source": "bench", "batch": "nightly"},
}


# --- the load (the private Postgres, the clients and the code checkout are benchmarks/overhead.py's) -------


def _own_cpu(process: psutil.Process) -> float:
    t = process.cpu_times()
    return float(t.user + t.system)


def measure(
    api_url: str,
    api_key: str,
    *,
    clients: int = 8,
    seconds: float,
    warmup: float = 3.0,
    api_pids: list[int] | None = None,
    postgres: CountingPostgres | None = None,
    database: str | None = None,
) -> dict[str, Any]:
    """`clients` threads post single jobs for `warmup` + `seconds`; the figures of the last `seconds`. With
    `api_pids`, the CPU of those processes (and their children) is counted; with `postgres` and `database`, the
    cluster's CPU and the statements run in that database."""
    stop, measuring = threading.Event(), threading.Event()
    results = [_Client() for _ in range(clients)]
    body = json.dumps(BODY).encode()
    threads = [
        threading.Thread(target=_loop, args=(api_url, api_key, stop, measuring, r, body), daemon=True) for r in results
    ]
    for t in threads:
        t.start()
    try:
        time.sleep(warmup)
        apis = [psutil.Process(pid) for pid in api_pids or []]
        pg = postgres.postmaster() if postgres is not None else None
        if postgres is not None:
            with psycopg.connect(postgres.admin_dsn, autocommit=True) as conn:
                conn.execute("SELECT pg_stat_statements_reset()")
        me = psutil.Process()
        clients_cpu0 = _own_cpu(me)
        api_cpu0 = sum(_cpu_seconds(p, reaped=False) for p in apis)
        pg_cpu0 = _cpu_seconds(pg, reaped=True) if pg is not None else 0.0
        measuring.set()
        started = time.perf_counter()
        time.sleep(seconds)
        measuring.clear()
        elapsed = time.perf_counter() - started
        api_cpu = sum(_cpu_seconds(p, reaped=False) for p in apis) - api_cpu0
        clients_cpu = _own_cpu(me) - clients_cpu0
        pg_cpu = (_cpu_seconds(pg, reaped=True) - pg_cpu0) if pg is not None else 0.0
        statements = nested = 0
        top: list[tuple[int, str]] = []
        if postgres is not None and database is not None:
            with psycopg.connect(postgres.admin_dsn, autocommit=True) as conn:
                rows = conn.execute(
                    "SELECT s.calls, s.query, s.toplevel FROM pg_stat_statements s "
                    "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s ORDER BY s.calls DESC",
                    (database,),
                ).fetchall()
            statements = sum(int(r[0]) for r in rows if r[2])
            nested = sum(int(r[0]) for r in rows if not r[2])
            top = [(int(r[0]), ("" if r[2] else "(nested) ") + " ".join(str(r[1]).split())[:160]) for r in rows[:25]]
    finally:
        stop.set()
        for t in threads:
            t.join(35)
    ok = sum(r.ok for r in results)
    errors: dict[str, int] = {}
    for r in results:
        for k, v in r.errors.items():
            errors[k] = errors.get(k, 0) + v
    latencies = sorted(x for r in results for x in r.latencies)
    per = max(ok, 1)
    return {
        "clients": clients,
        "seconds": elapsed,
        "submissions": ok,
        "per_second": ok / elapsed,
        "errors": errors,
        "p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else float("nan"),
        "api_cpu_ms": 1000 * api_cpu / per,
        "pg_cpu_ms": 1000 * pg_cpu / per,
        "cpu_ms": 1000 * (api_cpu + pg_cpu) / per,
        "clients_cpu_ms": 1000 * clients_cpu / per,
        "statements": statements / per,
        "nested_statements": nested / per,
        "top_statements": [(calls / per, query) for calls, query in top],
    }


# --- one side: its code, its database, its API -----------------------------------------------------------


def side_env(pg: CountingPostgres, redis_url: str, database: str) -> dict[str, str]:
    return {
        "MMJOBS_DATABASE_URL": pg.url(database),
        "MMJOBS_REDIS_URL": redis_url,
        "MINIMAX_API_KEY": "sk-unused",
        "MINIMAX_BASE_URL": "http://127.0.0.1:9",
        "MMJOBS_LOG_LEVEL": "INFO",
        # The request rates stay on (their Redis call is part of every submission), far above what 8 clients send.
        "MMJOBS_REQUESTS_PER_MINUTE": "6000000",
        "MMJOBS_KEY_REQUESTS_PER_MINUTE": "6000000",
    }


def run_side(
    procs: Procs,
    *,
    label: str,
    code_root: Path,
    pg: CountingPostgres,
    redis_url: str,
    clients: int,
    seconds: float,
    api_workers: int | None,
) -> dict[str, Any]:
    database = f"{DATABASE}_{label}"
    env = side_env(pg, redis_url, database)
    pg.create_database(database)
    check = "import service, sys; print('SERVICE_AT', service.__file__)"
    where = _run(procs, f"{label}-where", ["-c", check], env, code_root)
    if f"SERVICE_AT {code_root}" not in where:
        raise StackError(f"{label}: `service` was not imported from {code_root}: {where}")
    _run(procs, f"{label}-migrate", ["-m", "service.cli", "migrate"], env, code_root)
    keys = _run(procs, f"{label}-key", ["-m", "service.cli", "keys", "create", "--tenant", "bench"], env, code_root)
    api_key = [line.strip() for line in keys.splitlines() if line.strip()][-1]
    port = free_port()
    argv = ["-m", "service.cli", "api", "--port", str(port)]
    if api_workers is not None:
        argv += ["--workers", str(api_workers)]
    api = CodeProc(f"{label}-api-{len(procs.procs)}", argv, env, procs.log_dir, code_root)
    procs.procs.append(api)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/healthz", api, timeout=90)
        time.sleep(1.0)  # every worker process up
        result = measure(url, api_key, clients=clients, seconds=seconds, api_pids=[api.pid], postgres=pg,
                         database=database)  # fmt: skip
    finally:
        procs.stop([api])
    pg.drop_database(database)
    result["label"] = label
    return result


# --- the table -------------------------------------------------------------------------------------------


def table(ours: dict[str, Any], base: dict[str, Any] | None) -> str:
    rows: list[tuple[str, str, str]] = [
        ("single submissions/s (202s), 8 clients", f">= {TARGET_PER_SECOND}", "{per_second:.1f}"),
        ("latency p50, ms", "", "{p50_ms:.1f}"),
        ("latency p99, ms", "", "{p99_ms:.1f}"),
        ("CPU ms per submission: API processes", "", "{api_cpu_ms:.2f}"),
        ("CPU ms per submission: Postgres", "", "{pg_cpu_ms:.2f}"),
        ("CPU ms per submission: total", "", "{cpu_ms:.2f}"),
        ("CPU ms per submission: the clients (this process; not the service's)", "", "{clients_cpu_ms:.2f}"),
        ("SQL statements per submission (round trips: BEGIN, COMMIT included)", "", "{statements:.2f}"),
        ("  + statements run inside them (foreign-key checks)", "", "{nested_statements:.2f}"),
        ("other answers (not 202)", "0", "{errors}"),
    ]
    out = ["| metric | target | this commit | baseline |", "|---|---|---|---|"]
    for name, target, fmt in rows:
        ours_cell = fmt.format(**ours)
        base_cell = fmt.format(**base) if base is not None else "not run"
        out.append(f"| {name} | {target} | {ours_cell} | {base_cell} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--api-workers", type=int, default=None, help="default: the API's own default")
    parser.add_argument("--baseline", default=BASELINE, help="the commit to compare with")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--statements", action="store_true", help="also print the most frequent statements")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="mmjobs-submissions-"))
    log_dir = root / "logs"
    log_dir.mkdir()
    results: dict[str, dict[str, Any]] = {}
    pg = CountingPostgres(root, log_dir)
    rd = PrivateRedis(root, log_dir)
    try:
        pg.start()
        rd.start()
        with process_scope(log_dir) as procs, contextlib.ExitStack() as stack:
            sides: list[tuple[str, Path]] = [("ours", ROOT)]
            if not args.no_baseline:
                sides.insert(0, ("baseline", stack.enter_context(baseline_checkout(args.baseline))))
            for label, code_root in sides:
                rd.flush()
                print(f"measuring {label} ({code_root}) ...", flush=True)  # noqa: T201 - the benchmark's output
                results[label] = run_side(
                    procs, label=label, code_root=code_root, pg=pg, redis_url=rd.url(11),
                    clients=args.clients, seconds=args.seconds, api_workers=args.api_workers,
                )  # fmt: skip
    except StackError as exc:
        print(f"failed: {exc}\n(logs in {log_dir})", file=sys.stderr)  # noqa: T201 - the benchmark's output
        return 1
    finally:
        rd.stop()
        pg.stop()
        shutil.rmtree(pg.dir, ignore_errors=True)
        shutil.rmtree(rd.dir, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)  # the logs are kept only when a run failed
    print()  # noqa: T201 - the benchmark's output
    print(table(results["ours"], results.get("baseline")))  # noqa: T201 - the benchmark's output
    if args.statements:
        for label, r in results.items():
            print(f"\nstatements per submission, {label}:")  # noqa: T201 - the benchmark's output
            for per, query in r["top_statements"]:
                print(f"  {per:6.2f}  {query}")  # noqa: T201 - the benchmark's output
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
