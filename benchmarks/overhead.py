"""`python -m benchmarks.overhead [--quick] [--no-write] [--log-dir DIR] [--baseline-ref REF]`: what one job costs
the pipeline (issue 17.1), for this commit and for a baseline commit in the same run.

Each side runs its own code against a private Postgres cluster started here (initdb,
`shared_preload_libraries=pg_stat_statements`, benchmarks/chaos/infra.py) and a private redis-server, in a fresh
database of its own, with an instant upstream (the simulator, latency 0, no rate limits) and no limit of ours that
binds (MMJOBS_RATE_LIMITS far above what is sent). The baseline is REF checked out with `git worktree add` into a
temporary directory; its processes run with that directory as working directory and on PYTHONPATH (checked: its
`service` package is imported from there). The simulator is this commit's for both sides.

Two rows of figures per side:
- the pipeline: the API, the scheduler and 2 worker processes; one `POST /v1/batches` of N requests (3,000; --quick
  1,000); jobs/s from just before the POST to the moment every job is terminal (polled every 50 ms); CPU ms per job
  of the API, the scheduler, the workers and the Postgres cluster (psutil user + system; the simulator apart);
  SQL statements per job (pg_stat_statements `calls` of top-level statements in the side's database, BEGIN and
  COMMIT included, the benchmark's own polling left out);
- single submissions: the scheduler and workers stopped, 8 clients each post `POST /v1/jobs` in a loop for S
  seconds (20; --quick 8); submissions/s, CPU ms (API + Postgres) and statements per submission.

On a shared 2-core machine the wall-clock figures (jobs/s, submissions/s) move with whatever else runs; CPU ms and
statements per job are the figures to compare. Written to benchmarks/RESULTS.md as its own section (`--no-write`
to print only); the most frequent statements per job of each side go to the log directory (statements-*.txt).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import psutil
import psycopg

from benchmarks.chaos.infra import PG_BIN, PrivatePostgres, PrivateRedis, Program, _as_postgres
from benchmarks.report import write_section
from benchmarks.stack import (
    ROOT,
    Proc,
    Procs,
    SimSpec,
    StackError,
    _die_with_parent,
    free_port,
    process_scope,
    start_simulator,
    wait_http,
    wait_log,
)

BASELINE_REF = "0655891"
MODEL = "MiniMax-M2.7"
WORKERS, CONCURRENCY, API_WORKERS = 2, 50, 2
CLIENTS = 8
TARGET_JOBS_PER_SECOND, TARGET_SUBMISSIONS_PER_SECOND = 500, 300
POLL_TAG = "overhead-poll"


def job_body(i: int) -> dict[str, Any]:
    text = f"Classify ticket {i}: the printer on floor {i % 7} is out of toner again."
    return {"model": MODEL, "params": {"max_tokens": 64, "messages": [{"role": "user", "content": text}]}}


# --- a private Postgres that counts statements -----------------------------------------------------------


class CountingPostgres(PrivatePostgres):
    """PrivatePostgres with pg_stat_statements loaded (every statement counted, BEGIN/COMMIT included)."""

    def start(self, timeout: float = 60) -> None:
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.sockets),
            "max_connections": "300",
            "fsync": "off",
            "full_page_writes": "off",
            "shared_buffers": "128MB",
            "shared_preload_libraries": "pg_stat_statements",
            "pg_stat_statements.track": "all",
            "pg_stat_statements.track_utility": "on",
            "pg_stat_statements.max": "10000",
        }
        argv = [str(PG_BIN / "postgres"), "-D", str(self.data), "-p", str(self.port)]
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        self.starts += 1
        self.proc = Program(f"postgres-{self.starts}", _as_postgres(argv), self.log_dir)
        deadline = time.monotonic() + timeout
        while not self.accepting():
            if time.monotonic() > deadline:
                raise StackError(f"private Postgres did not start:\n{self.proc.tail()}")
            time.sleep(0.1)
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    def postmaster(self) -> psutil.Process:
        return psutil.Process(int((self.data / "postmaster.pid").read_text().split()[0]))

    def reset_statements(self) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_stat_statements_reset()")

    def statements(self, database: str) -> list[tuple[int, bool, str]]:
        """(calls, top level?, query) of every statement counted in `database`, most frequent first, the
        benchmark's own polling left out."""
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT s.calls, s.toplevel, s.query FROM pg_stat_statements s "
                "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s ORDER BY s.calls DESC",
                (database,),
            ).fetchall()
        return [(int(c), bool(t), str(q)) for c, t, q in rows if POLL_TAG not in str(q)]


def _cpu_seconds(process: psutil.Process, *, reaped: bool = False) -> float:
    """User + system CPU of a process and its live descendants (and, with `reaped`, of the children it has
    waited for: Postgres backends that exited)."""
    total = 0.0
    with contextlib.suppress(psutil.Error):
        t = process.cpu_times()
        total += t.user + t.system + ((t.children_user + t.children_system) if reaped else 0.0)
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                c = child.cpu_times()
                total += c.user + c.system
    return total


# --- processes running one side's code -------------------------------------------------------------------


class CodeProc(Proc):
    """A Proc whose Python runs `code_root`'s packages: that directory is its working directory (`python -m`
    puts it first on sys.path) and on PYTHONPATH (for the processes it spawns)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path, code_root: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        path = os.pathsep.join([str(code_root), *filter(None, [os.environ.get("PYTHONPATH")])])
        self.popen = subprocess.Popen(
            [sys.executable, *argv],
            env={**os.environ, **env, "PYTHONPATH": path},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=code_root,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )


def _start(procs: Procs, name: str, argv: list[str], env: dict[str, str], code_root: Path) -> CodeProc:
    proc = CodeProc(f"{name}-{len(procs.procs)}", argv, env, procs.log_dir, code_root)
    procs.procs.append(proc)
    return proc


def _run(procs: Procs, name: str, argv: list[str], env: dict[str, str], code_root: Path, timeout: float = 120) -> str:
    proc = _start(procs, name, argv, env, code_root)
    if proc.popen.wait(timeout) != 0:
        raise StackError(f"{name} failed:\n{proc.tail()}")
    procs.stop([proc])
    return proc.log_path.read_text()


@contextlib.contextmanager
def baseline_checkout(ref: str) -> Iterator[Path]:
    """`git worktree add --detach` of `ref` into a temporary directory, removed on the way out."""
    root = Path(tempfile.mkdtemp(prefix="mmjobs-overhead-baseline-"))
    path = root / "code"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), ref],
                   check=True, capture_output=True)  # fmt: skip
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


# --- the single-submission load --------------------------------------------------------------------------


@dataclass
class _Client:
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)


def _loop(
    api_url: str, api_key: str, stop: threading.Event, measuring: threading.Event, out: _Client, body: bytes
) -> None:
    """One client: `POST /v1/jobs` with `body` in a loop on one keep-alive connection, counted while measuring."""
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    with httpx.Client(base_url=api_url, headers=headers, limits=limits, timeout=30) as client:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                status: int | str = client.post("/v1/jobs", content=body).status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            elapsed = time.perf_counter() - started
            if not measuring.is_set():
                continue
            if status == 202:
                out.ok += 1
                out.latencies.append(elapsed)
            else:
                out.errors[str(status)] = out.errors.get(str(status), 0) + 1


# --- one side ----------------------------------------------------------------------------------------------


@dataclass
class Side:
    label: str
    ref: str
    jobs: int = 0
    seconds: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds of the batch run, per part
    statements: int = 0
    nested: int = 0
    top: list[tuple[int, bool, str]] = field(default_factory=list)
    sub_count: int = 0
    sub_seconds: float = 0.0
    sub_errors: dict[str, int] = field(default_factory=dict)
    sub_p50_ms: float = float("nan")
    sub_cpu: dict[str, float] = field(default_factory=dict)
    sub_statements: int = 0
    sub_top: list[tuple[int, bool, str]] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.jobs / self.seconds if self.seconds else 0.0

    def cpu_ms(self, *parts: str) -> float:
        return 1000 * sum(self.cpu.get(p, 0.0) for p in parts) / max(self.jobs, 1)

    def sub_cpu_ms(self, *parts: str) -> float:
        return 1000 * sum(self.sub_cpu.get(p, 0.0) for p in parts) / max(self.sub_count, 1)


def side_env(pg: CountingPostgres, redis_url: str, database: str, sim_url: str) -> dict[str, str]:
    return {
        "MMJOBS_DATABASE_URL": pg.url(database),
        "MMJOBS_REDIS_URL": redis_url,
        "MINIMAX_API_KEY": "sk-simulator",
        "MINIMAX_BASE_URL": sim_url,
        "MMJOBS_LOG_LEVEL": "INFO",
        "MMJOBS_WORKER_CONCURRENCY": str(CONCURRENCY),
        # Nothing of ours binds: the upstream limits far above what is sent, no intake request rate.
        "MMJOBS_RATE_LIMITS": json.dumps({MODEL: {"rpm": 100_000_000, "tpm": 100_000_000_000}}),
        "MMJOBS_REQUESTS_PER_MINUTE": "0",
        "MMJOBS_KEY_REQUESTS_PER_MINUTE": "0",
    }


def _terminal_count(conn: psycopg.Connection[Any]) -> dict[str, int]:
    rows = conn.execute(f"SELECT /* {POLL_TAG} */ status, count(*) FROM jobs GROUP BY status").fetchall()
    return {str(s): int(n) for s, n in rows}


TERMINAL = ("succeeded", "failed", "canceled", "expired")


def run_side(
    procs: Procs,
    *,
    side: Side,
    code_root: Path,
    pg: CountingPostgres,
    redis_url: str,
    sim_url: str,
    jobs: int,
    sub_seconds: float,
    profile_dir: Path | None,
) -> None:
    database = f"mmjobs_overhead_{side.label}"
    env = side_env(pg, redis_url, database, sim_url)
    pg.create_database(database)
    check = "import service, sys; print('SERVICE_AT', service.__file__)"
    where = _run(procs, f"{side.label}-where", ["-c", check], env, code_root)
    if f"SERVICE_AT {code_root}" not in where:
        raise StackError(f"{side.label}: `service` was not imported from {code_root}: {where}")
    print(f"  {side.label}: {where.strip()}", flush=True)  # noqa: T201 - the benchmark's output
    _run(procs, f"{side.label}-migrate", ["-m", "service.cli", "migrate"], env, code_root)
    keys = _run(
        procs, f"{side.label}-key", ["-m", "service.cli", "keys", "create", "--tenant", "bench"], env, code_root
    )
    api_key = [line.strip() for line in keys.splitlines() if line.strip()][-1]
    port = free_port()
    api_argv = ["-m", "service.cli", "api", "--port", str(port), "--workers", str(API_WORKERS)]
    api = _start(procs, f"{side.label}-api", api_argv, env, code_root)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/healthz", api, timeout=90)
    scheduler = _start(procs, f"{side.label}-scheduler", ["-m", "service.cli", "scheduler"], env, code_root)
    workers = [
        _start(
            procs,
            f"{side.label}-worker",
            ["-m", "service.cli", "worker", "--concurrency", str(CONCURRENCY)],
            env,
            code_root,
        )
        for _ in range(WORKERS)
    ]
    for w in workers:
        wait_log(w, b" ready.", timeout=120)
    time.sleep(2.0)  # every process settled (imports, pools)
    parts = {"api": [api], "scheduler": [scheduler], "workers": workers}
    postmaster = pg.postmaster()
    sim_proc = next(p for p in procs.procs if p.name.startswith("simulator"))

    def snapshot() -> dict[str, float]:
        out = {name: sum(_cpu_seconds(psutil.Process(p.pid)) for p in ps) for name, ps in parts.items()}
        out["postgres"] = _cpu_seconds(postmaster, reaped=True)
        out["simulator"] = _cpu_seconds(psutil.Process(sim_proc.pid))
        return out

    # The pipeline: one batch, first submission to last terminal job.
    body = {"requests": [{"custom_id": f"r-{i}", **job_body(i)} for i in range(jobs)]}
    payload = json.dumps(body).encode()
    spies = _start_profilers(procs, profile_dir, side.label, parts) if profile_dir else []
    pg.reset_statements()
    before = snapshot()
    poll = psycopg.connect(pg.dsn(database), autocommit=True)
    started = time.perf_counter()
    r = httpx.post(url + "/v1/batches", content=payload, timeout=300,
                   headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"})  # fmt: skip
    if r.status_code != 202:
        raise StackError(f"{side.label}: POST /v1/batches answered {r.status_code}: {r.text[:300]}")
    deadline = time.monotonic() + 900
    while True:
        counts = _terminal_count(poll)
        if sum(counts.get(s, 0) for s in TERMINAL) >= jobs:
            break
        if time.monotonic() > deadline:
            raise StackError(f"{side.label}: not every job terminal after 900 s: {counts}")
        time.sleep(0.05)
    side.seconds = time.perf_counter() - started
    after = snapshot()
    poll.close()
    for spy in spies:
        with contextlib.suppress(ProcessLookupError):
            os.kill(spy.pid, signal.SIGINT)
    for spy in spies:
        with contextlib.suppress(subprocess.TimeoutExpired):
            spy.popen.wait(60)
    side.jobs = jobs
    side.outcomes = counts
    side.cpu = {k: after[k] - before[k] for k in after}
    rows = pg.statements(database)
    side.statements = sum(c for c, top, _ in rows if top)
    side.nested = sum(c for c, top, _ in rows if not top)
    side.top = rows[:40]

    # Single submissions: the scheduler and workers stopped, so every statement counted is the intake's.
    procs.stop([scheduler, *workers])
    parts = {"api": [api]}
    stop, measuring = threading.Event(), threading.Event()
    clients = [_Client() for _ in range(CLIENTS)]
    request = json.dumps(job_body(1)).encode()
    threads = [
        threading.Thread(target=_loop, args=(url, api_key, stop, measuring, c, request), daemon=True) for c in clients
    ]
    for t in threads:
        t.start()
    try:
        time.sleep(3.0)  # warm-up
        pg.reset_statements()
        before = snapshot()
        measuring.set()
        t0 = time.perf_counter()
        time.sleep(sub_seconds)
        measuring.clear()
        side.sub_seconds = time.perf_counter() - t0
        after = snapshot()
    finally:
        stop.set()
        for t in threads:
            t.join(35)
    side.sub_count = sum(c.ok for c in clients)
    for c in clients:
        for k, v in c.errors.items():
            side.sub_errors[k] = side.sub_errors.get(k, 0) + v
    latencies = sorted(x for c in clients for x in c.latencies)
    side.sub_p50_ms = 1000 * statistics.median(latencies) if latencies else float("nan")
    side.sub_cpu = {k: after[k] - before[k] for k in ("api", "postgres")}
    rows = pg.statements(database)
    side.sub_statements = sum(c for c, top, _ in rows if top)
    side.sub_top = rows[:25]
    procs.stop([api])
    pg.drop_database(database)


def _start_profilers(procs: Procs, out: Path, label: str, parts: dict[str, list[CodeProc]]) -> list[Proc]:
    """py-spy record of every process of the stack (and the children of each: uvicorn and Celery pools), sampling
    only the thread that holds the GIL (`--gil`): Python's CPU, not threads blocked on a socket."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    started: list[Proc] = []
    for name, ps in parts.items():
        for i, p in enumerate(ps):
            target = f"{out}/{label}-{name}-{i}.txt"
            argv = [spy, "record", "--pid", str(p.pid), "--subprocesses", "--format", "raw", "--rate", "50",
                    "--nonblocking", "--gil", "-o", target]  # fmt: skip
            started.append(Program(f"pyspy-{label}-{name}-{i}", argv, procs.log_dir))
            procs.procs.append(started[-1])
    time.sleep(1.0)
    return started


# --- the table -------------------------------------------------------------------------------------------


def table(ours: Side, base: Side | None) -> str:
    def cell(side: Side | None, fmt: Any) -> str:
        return "not run" if side is None else str(fmt(side))

    rows: list[tuple[str, str, Any]] = [
        (f"pipeline: jobs/s end to end ({ours.jobs:,}-request batch, {WORKERS} workers)",
         f">= {TARGET_JOBS_PER_SECOND}", lambda s: f"{s.per_second:.1f} ({s.seconds:.1f} s)"),
        ("pipeline: jobs ending succeeded", "all", lambda s: f"{s.outcomes.get('succeeded', 0):,} / {s.jobs:,}"),
        ("pipeline: CPU ms per job, total (API + scheduler + workers + Postgres)", "lower",
         lambda s: f"{s.cpu_ms('api', 'scheduler', 'workers', 'postgres'):.2f}"),
        ("  API", "", lambda s: f"{s.cpu_ms('api'):.2f}"),
        ("  scheduler", "", lambda s: f"{s.cpu_ms('scheduler'):.2f}"),
        ("  workers", "", lambda s: f"{s.cpu_ms('workers'):.2f}"),
        ("  Postgres", "", lambda s: f"{s.cpu_ms('postgres'):.2f}"),
        ("  (simulator, apart)", "", lambda s: f"{s.cpu_ms('simulator'):.2f}"),
        ("pipeline: SQL statements per job (round trips, BEGIN/COMMIT included)", "lower",
         lambda s: f"{s.statements / max(s.jobs, 1):.2f}"),
        ("  + statements run inside them (triggers, FK checks)", "", lambda s: f"{s.nested / max(s.jobs, 1):.2f}"),
        (f"single submissions/s, {CLIENTS} clients (POST /v1/jobs; scheduler, workers stopped)",
         f">= {TARGET_SUBMISSIONS_PER_SECOND}", lambda s: f"{s.sub_count / max(s.sub_seconds, 1e-9):.1f}"),
        ("  latency p50, ms", "", lambda s: f"{s.sub_p50_ms:.1f}"),
        ("  CPU ms per submission (API + Postgres)", "lower", lambda s: f"{s.sub_cpu_ms('api', 'postgres'):.2f}"),
        ("  SQL statements per submission", "lower", lambda s: f"{s.sub_statements / max(s.sub_count, 1):.2f}"),
        ("  other answers (not 202)", "0", lambda s: str(s.sub_errors or 0)),
    ]  # fmt: skip
    base_head = f"baseline ({base.ref})" if base is not None else "baseline"
    out = [f"| metric | target | minimax-jobs (this commit) | {base_head} |", "|---|---|---|---|"]
    for name, target, fmt in rows:
        out.append(f"| {name} | {target} | {cell(ours, fmt)} | {cell(base, fmt)} |")
    return "\n".join(out)


def _write_statements(log_dir: Path, side: Side) -> Path:
    path = log_dir / f"statements-{side.label}.txt"
    lines = [f"pipeline, per job ({side.jobs} jobs):"]
    lines += [
        f"{c / max(side.jobs, 1):8.3f} {'' if t else '(nested) '}{' '.join(q.split())[:220]}" for c, t, q in side.top
    ]
    lines += ["", f"single submissions, per submission ({side.sub_count}):"]
    lines += [
        f"{c / max(side.sub_count, 1):8.3f} {'' if t else '(nested) '}{' '.join(q.split())[:220]}"
        for c, t, q in side.sub_top
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _current_ref() -> str:
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()  # fmt: skip
    return done.stdout.strip() + (" + uncommitted changes" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a 1,000-request batch and 8 s of single submissions")
    p.add_argument("--jobs", type=int, help="batch requests (default 3000; --quick 1000)")
    p.add_argument("--seconds", type=float, help="single-submission seconds (default 20; --quick 8)")
    p.add_argument("--baseline-ref", default=BASELINE_REF, help=f"the commit to compare with (default {BASELINE_REF})")
    p.add_argument("--no-baseline", action="store_true", help="measure this commit only")
    p.add_argument("--profile", action="store_true", help="py-spy record every process of this commit's side")
    p.add_argument("--log-dir", type=Path, help="where process logs go (default: a new directory in /tmp)")
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = p.parse_args(argv)
    jobs = args.jobs or (1000 if args.quick else 3000)
    sub_seconds = args.seconds or (8.0 if args.quick else 20.0)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="mmjobs-bench-overhead-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="mmjobs-overhead-"))
    command = "python -m benchmarks.overhead " + " ".join(argv if argv is not None else sys.argv[1:])
    signal.signal(signal.SIGTERM, _terminate)
    ours = Side(label="ours", ref=_current_ref())
    base: Side | None = None if args.no_baseline else Side(label="baseline", ref=args.baseline_ref)
    pg = CountingPostgres(root, log_dir)
    rd = PrivateRedis(root, log_dir)
    try:
        pg.start()
        rd.start()
        with process_scope(log_dir) as procs, contextlib.ExitStack() as stack:
            sim_url = start_simulator(procs, SimSpec(latency="0", rpm=None, tpm=None))
            sides: list[tuple[Side, Path]] = [(ours, ROOT)]
            if base is not None:
                sides.insert(0, (base, stack.enter_context(baseline_checkout(args.baseline_ref))))
            for side, code_root in sides:
                rd.flush()
                httpx.post(sim_url + "/_sim/reset", timeout=10)
                print(f"measuring {side.label} ({side.ref}, {code_root}) ...", flush=True)  # noqa: T201
                profile_dir = log_dir if args.profile and side is ours else None
                run_side(procs, side=side, code_root=code_root, pg=pg, redis_url=rd.url(11), sim_url=sim_url,
                         jobs=jobs, sub_seconds=sub_seconds, profile_dir=profile_dir)  # fmt: skip
                print(f"  statements: {_write_statements(log_dir, side)}", flush=True)  # noqa: T201
    except StackError as exc:
        print(f"failed: {exc}\n(logs in {log_dir})", file=sys.stderr)  # noqa: T201
        return 1
    finally:
        rd.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)
    text = "\n".join(
        [
            f"`{command.strip()}`; {_machine()}. Private Postgres (pg_stat_statements) and Redis; simulator latency 0,",
            "no rate limits; API with 2 uvicorn processes. Wall-clock figures are noisy on a shared 2-core machine;",
            "CPU ms and statements per job are the figures to compare.",
            "",
            table(ours, base),
        ]
    )
    print("\n" + text + f"\n\nProcess logs: {log_dir}")  # noqa: T201 - the benchmark's output
    if not args.no_write:
        path = write_section("overhead", "Cost per job: the pipeline and single submissions (issue 17.1)", text)
        print(f"written to {path}")  # noqa: T201 - the benchmark's output
    return 0


def _machine() -> str:
    return f"{psutil.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
