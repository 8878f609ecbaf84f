"""`python -m benchmarks.load [--quick] [--clients 200] [--seconds 60]`: the REST API under many concurrent
clients while the workers are busy (issue 8).

The stack runs as separate processes on a database and a Redis database of its own (`mmjobs_load`, Redis 13): the
simulator, `service.cli api --workers N`, the scheduler and 2 workers. One batch per tenant keeps the workers
busy (2,000 requests in all, at a rate limit that makes them last longer than the run); then the clients
(load_clients.py), each with its own connection, loop for the run's duration: submit a job, poll it, list jobs,
get their tenant's batch, and now and then download the batch's results. Printed: per endpoint, requests,
p50 / p99 / max as the clients saw them and p50 / p99 as the API logged them, 5xx and other non-2xx answers and
requests that got no answer; requests/s; the API's PSS, CPU per request and connections; where the machine's CPU
went; and, when there were errors, what the API's logs say about them. Written to benchmarks/RESULTS.md as its
own section (`--no-write` to print only).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import signal
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import psutil
import psycopg

from benchmarks import stack
from benchmarks.load_clients import (
    MODEL,
    ClientRun,
    Stats,
    Tenant,
    endpoint_of,
    job_body,
    run_clients_apart,
    table,
)
from benchmarks.metrics import MIB
from benchmarks.report import machine, write_section
from benchmarks.stack import (
    PG_BASE,
    Proc,
    Procs,
    SimSpec,
    StackError,
    create_key,
    process_scope,
    start_our_stack,
    start_simulator,
)

DATABASE = stack.DB_PREFIX + "mmjobs_load"
REDIS_URL = stack.REDIS_SERVER + "/13"
TENANTS = 4
WORKERS, CONCURRENCY = 2, 50
# The upstream limit (simulator and our limiter alike): 20 calls/s, so the background batches outlast the run.
RPM = 1200
# Two cores: one uvicorn process per core. One answers 503 to 200 clients (uvicorn's limit_concurrency, 200, counts
# open connections); more only share the same two cores with the rest of the stack, and each process keeps a
# Postgres pool of its own (Postgres allows 100 connections in all). Measurements: README.md.
DEFAULT_API_WORKERS = 2


# --- the stack -------------------------------------------------------------------------------------------------


def start_stack(procs: Procs, sim_url: str, log_dir: Path, api_workers: int) -> tuple[str, Proc, dict[str, str]]:
    """Fresh database and Redis db, then the API, the scheduler and the workers; (API URL, API process, env)."""
    extra = {
        "MMJOBS_RATE_LIMITS": json.dumps({MODEL: {"rpm": RPM, "tpm": 1_000_000_000}}),
        "MMJOBS_FILES_DIR": str(log_dir / "files"),
    }
    stack = start_our_stack(
        procs, sim_url, workers=WORKERS, concurrency=CONCURRENCY, api_workers=api_workers, extra_env=extra,
        database=DATABASE, redis_url=REDIS_URL,
    )  # fmt: skip
    assert stack.api is not None
    return stack.api_url, stack.api, stack.env


def submit_background(api_url: str, procs: Procs, env: dict[str, str], batch_requests: int) -> list[Tenant]:
    """A key and a batch per tenant; the batches add up to `batch_requests` requests."""
    tenants = []
    per_tenant = max(1, batch_requests // TENANTS)
    for t in range(TENANTS):
        name = f"load-{t}"
        key = create_key(procs, env, name)
        requests = [{"custom_id": f"bg-{i}", **job_body(i)} for i in range(per_tenant)]
        r = httpx.post(
            f"{api_url}/v1/batches",
            json={"requests": requests, "metadata": {"purpose": "background"}},
            headers={"Authorization": f"Bearer {key}"},
            timeout=120,
        )
        if r.status_code != 202:
            raise StackError(f"background batch for {name}: {r.status_code} {r.text[:300]}")
        tenants.append(Tenant(name=name, key=key, batch_id=str(r.json()["id"])))
    return tenants


def job_counts(db: psycopg.Connection[tuple[Any, ...]]) -> Counter[str]:
    return Counter({str(s): int(n) for s, n in db.execute("SELECT status, count(*) FROM jobs GROUP BY status")})


class ApiSampler:
    """Every `interval` seconds: the summed PSS of the API's processes (the uvicorn supervisor and its workers,
    forked from it: PSS shares their common pages out instead of counting them once per process), the summed RSS
    for reference, the largest single process (PSS), and the most client connections any one of them held."""

    def __init__(self, pid: int, port: int, interval: float = 0.5) -> None:
        self.root = psutil.Process(pid)
        self.port = port
        self.interval = interval
        self.peak_total = 0  # PSS, summed
        self.peak_total_rss = 0
        self.peak_single = 0  # PSS of one process
        self.peak_connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="api-sampler", daemon=True)

    def sample(self, *, connections: bool = True) -> None:
        try:
            family = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        total = total_rss = 0
        for proc in family:
            try:
                info = proc.memory_full_info()
                pss, rss = int(getattr(info, "pss", info.rss)), int(info.rss)
                if connections:
                    held = sum(
                        1
                        for c in proc.net_connections(kind="tcp")
                        if c.laddr and c.laddr.port == self.port and c.status == psutil.CONN_ESTABLISHED
                    )
                    self.peak_connections = max(self.peak_connections, held)
            except psutil.Error:
                continue
            total += pss
            total_rss += rss
            self.peak_single = max(self.peak_single, pss)
        self.peak_total = max(self.peak_total, total)
        self.peak_total_rss = max(self.peak_total_rss, total_rss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> ApiSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def _family_cpu(pid: int) -> float:
    """CPU time (user + system) used so far by a process and its descendants still alive."""
    total = 0.0
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
    return total


def cpu_snapshot(procs: Procs) -> dict[str, float]:
    """CPU seconds used so far: per part of our stack, by this process (the load generator), by the Postgres
    backends serving our database, and by the whole machine."""
    parts: defaultdict[str, float] = defaultdict(float)
    for child in procs.procs:
        parts[child.name.split("-")[0]] += _family_cpu(child.pid)
    own = resource.getrusage(resource.RUSAGE_SELF)  # the clients run in a child, which adds its own
    parts["load generator"] = own.ru_utime + own.ru_stime
    for backend in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(DATABASE in arg for arg in backend.info["cmdline"] or ()) and "postgres" in backend.name():
                times = backend.cpu_times()
                parts["postgres"] += times.user + times.system
    machine = psutil.cpu_times()
    parts["machine"] = machine.user + machine.system + machine.nice + getattr(machine, "softirq", 0.0)
    return dict(parts)


# --- the API's logs --------------------------------------------------------------------------------------------


def read_api_logs(paths: list[Path]) -> tuple[dict[str, list[float]], list[str]]:
    """From the API's logs: the duration of every request of ours as the API measured it (seconds, by endpoint:
    from uvicorn handing it to the app to the last byte sent), and what it logged about errors, most frequent
    first: its 5xx by path, uvicorn's own 503s (its concurrency limit answers them before the app sees the request,
    so the app logs nothing), and the exceptions logged."""
    durations: dict[str, list[float]] = defaultdict(list)
    causes: Counter[str] = Counter()
    for path in paths:
        in_traceback = False  # a traceback printed as text (rich, by the CLI) spans lines up to its exception line
        for line in path.read_text(errors="replace").splitlines():
            if in_traceback:
                if line and not line.startswith(("│", "╭", "╰", " ")):
                    causes["logged error: " + line[:200]] += 1
                    in_traceback = False
                continue
            if "Exceeded concurrency limit" in line:
                causes["uvicorn: 503 'Exceeded concurrency limit' (limit_concurrency; the app never saw it)"] += 1
            elif "Traceback (most recent call last)" in line and not line.startswith("{"):
                in_traceback = True
            if not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("event") == "request":
                status, url = int(record.get("status", 0)), str(record.get("path"))
                if status >= 500:
                    causes[f"app answered {status} on {record.get('method')} {url}"] += 1
                if endpoint := endpoint_of(str(record.get("method")), url):
                    durations[endpoint].append(float(record.get("duration_ms", 0)) / 1000)
            elif record.get("exception") or record.get("level") == "error":
                text = str(record.get("exception") or record.get("event")).strip() or "?"
                causes["logged error: " + text.splitlines()[-1][:200]] += 1
    return dict(durations), [f"{n:,} x {cause}" for cause, n in causes.most_common(12)]


# --- the report ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    clients_run: ClientRun
    api_workers: int
    clients: int
    seconds: float
    batch_requests: int
    api_idle_pss: int
    api_peak_pss: int
    api_peak_rss: int
    api_peak_single_pss: int
    api_peak_connections: int
    jobs_before: Counter[str]
    jobs_after: Counter[str]
    cpu: dict[str, float]  # CPU seconds over the run, by part (cpu_snapshot)
    load_average: tuple[float, float]
    server: dict[str, list[float]]  # the API's own durations per endpoint (read_api_logs)
    causes: list[str]

    def _cpu_parts(self) -> list[tuple[str, float]]:
        parts = [(name, self.cpu.get(name, 0.0)) for name in ("api", "worker", "scheduler", "simulator", "postgres")]
        parts.append(("load generator", self.cpu.get("load generator", 0.0)))
        parts.append(("other", max(0.0, self.cpu.get("machine", 0.0) - sum(s for _, s in parts))))
        return parts

    def report(self, command: str) -> str:
        run, total = self.clients_run, Stats()
        for s in run.stats.values():
            total.merge(s)
        finished = sum(self.jobs_after[s] - self.jobs_before[s] for s in ("succeeded", "failed", "canceled", "expired"))
        waiting = sum(n for s, n in self.jobs_after.items() if s in ("queued", "running", "retrying"))
        target = "✓" if total.server_errors == 0 else "✗"
        parts = [
            f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}; 1-minute load average "
            f"{self.load_average[0]:.1f} before the stack started (other work on this machine), "
            f"{self.load_average[1]:.1f} at the end of the run.",
            f"Command: `{command}`. API: `service.cli api --workers {self.api_workers}` (uvicorn processes); "
            f"{self.clients} clients for {self.seconds:g} s, each its own connection, over {TENANTS} tenants; "
            f"background: {self.batch_requests:,} batch requests, {WORKERS} workers x {CONCURRENCY} threads, "
            f"simulator latency 1-2 s, limit {RPM} RPM.",
            table(run.stats, run.elapsed, self.server),
            "\n".join(
                [
                    f"- requests/s: {total.requests / run.elapsed:,.0f} ({total.requests:,} in {run.elapsed:.1f} s)",
                    f"- 5xx: {total.server_errors:,} (target 0) {target}",
                    f"- API PSS: {self.api_idle_pss / MIB:,.0f} MiB idle, peak {self.api_peak_pss / MIB:,.0f} MiB "
                    f"(every API process summed; the largest single one {self.api_peak_single_pss / MIB:,.0f} MiB; "
                    f"peak RSS summed, for reference: {self.api_peak_rss / MIB:,.0f} MiB); "
                    f"most client connections held by one API process: {self.api_peak_connections}",
                    f"- API CPU: {1000 * self.cpu.get('api', 0) / max(1, total.requests):.1f} ms per request",
                    f"- workers busy meanwhile: {finished:,} jobs finished during the run, {waiting:,} still "
                    f"queued or running at its end",
                    f"- the clients' event loop ({run.priority}) was runnable but waiting for a CPU "
                    f"{run.loop_wait:.0%} of the run",
                    "- CPU over the run, in cores (2 on this machine): "
                    + ", ".join(f"{name} {seconds / run.elapsed:.2f}" for name, seconds in self._cpu_parts())
                    + " (the load generator is one asyncio process on the same machine; Postgres: the backends "
                    "serving this database; other: everything else on the machine, other people's work included)",
                ]
            ),
        ]
        if self.causes:
            parts.append("What the API logged about errors:\n\n" + "\n".join(f"- {c}" for c in self.causes))
        return "\n\n".join(parts)


def run(*, clients: int, seconds: float, batch_requests: int, api_workers: int, log_dir: Path) -> Outcome:
    load_before = os.getloadavg()[0]
    with process_scope(log_dir) as procs:
        sim_url = start_simulator(procs, SimSpec(latency="1-2", rpm=RPM, tpm=None, output_tokens=32))
        api_url, api, env = start_stack(procs, sim_url, log_dir, api_workers)
        print(f"- stack up: API {api_url} ({api_workers} workers), logs in {log_dir}", flush=True)  # noqa: T201
        tenants = submit_background(api_url, procs, env, batch_requests)
        time.sleep(3)  # let the workers fill up with the batches' calls
        # One connection, opened before the load: Postgres' 100 may all be taken by the time the run ends.
        db = psycopg.connect(PG_BASE + DATABASE, autocommit=True)
        sampler = ApiSampler(api.pid, int(api_url.rsplit(":", 1)[1]))
        sampler.sample(connections=False)
        idle = sampler.peak_total
        jobs_before = job_counts(db)
        print(f"- {clients} clients for {seconds:g} s", flush=True)  # noqa: T201
        cpu_before = cpu_snapshot(procs)
        with sampler:
            client_run = run_clients_apart(api_url, tenants, clients, seconds)
        cpu_after = cpu_snapshot(procs)
        load_after = os.getloadavg()[0]
        jobs_after = job_counts(db)
        db.close()
        api_logs = [p.log_path for p in procs.procs if p.name.startswith("api")]
    server, causes = read_api_logs(api_logs)
    cpu = {name: cpu_after[name] - cpu_before.get(name, 0.0) for name in cpu_after}
    cpu["load generator"] += client_run.cpu_seconds
    return Outcome(
        clients_run=client_run,
        api_workers=api_workers,
        clients=clients,
        seconds=seconds,
        batch_requests=batch_requests,
        api_idle_pss=idle,
        api_peak_pss=sampler.peak_total,
        api_peak_rss=sampler.peak_total_rss,
        api_peak_single_pss=sampler.peak_single,
        api_peak_connections=sampler.peak_connections,
        jobs_before=jobs_before,
        jobs_after=jobs_after,
        cpu=cpu,
        load_average=(load_before, load_after),
        server=server,
        causes=causes,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="50 clients for 15 s over a 500-request background")
    p.add_argument("--clients", type=int, help="concurrent clients (default 200; --quick 50)")
    p.add_argument("--seconds", type=float, help="how long the clients run (default 60; --quick 15)")
    p.add_argument("--batch-requests", type=int, help="background batch requests in all (default 2000; --quick 500)")
    p.add_argument("--api-workers", type=int, default=DEFAULT_API_WORKERS, help="uvicorn processes for the API")
    p.add_argument("--log-dir", type=Path, help="where process logs go (default: a new directory in /tmp)")
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = p.parse_args(argv)
    clients = args.clients or (50 if args.quick else 200)
    seconds = args.seconds or (15.0 if args.quick else 60.0)
    batch_requests = args.batch_requests or (500 if args.quick else 2000)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="mmjobs-bench-load-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.load " + " ".join(argv if argv is not None else sys.argv[1:])
    signal.signal(signal.SIGTERM, _terminate)
    outcome = run(
        clients=clients, seconds=seconds, batch_requests=batch_requests, api_workers=args.api_workers, log_dir=log_dir
    )
    text = outcome.report(command.strip())
    print("\n" + text + f"\n\nProcess logs: {log_dir}")  # noqa: T201
    if not args.no_write:
        print(f"written to {write_section('load', 'API under load (issue 8)', text)}")  # noqa: T201
    return 0


def _terminate(signum: int, frame: FrameType | None) -> None:
    # The same unwinding as Ctrl-C, so process_scope stops every process it started.
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    sys.exit(main())
