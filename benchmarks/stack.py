"""Process orchestration: the simulator, our stack (API, scheduler, workers) and the baseline's Celery workers,
each a separate process in its own process group, always stopped (also on Ctrl-C and on errors)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_BASE = "postgresql://postgres@127.0.0.1:5432/"
# Two runs side by side (or a benchmark beside the test suite) keep apart with these: a Redis server of their own
# and a prefix on every database name.
REDIS_SERVER = os.environ.get("MMJOBS_BENCH_REDIS_SERVER", "redis://127.0.0.1:6379").rstrip("/")
DB_PREFIX = os.environ.get("MMJOBS_BENCH_DB_PREFIX", "")
REDIS_URL = REDIS_SERVER + "/11"
DATABASE = DB_PREFIX + "mmjobs_bench"
SIM_KEY = "sk-simulator"
_PR_SET_PDEATHSIG = 1


class StackError(RuntimeError):
    """A process would not start or answer."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it if the benchmark itself dies (even by SIGKILL)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Proc:
    """One child process (and the process group it leads), its output kept in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            [sys.executable, *argv],
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace: float = 8.0) -> None:
        """SIGTERM the group, then SIGKILL whatever is left after `grace` seconds."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # The leader may be gone while its children (prefork pool) still run: kill the group regardless.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        self._log.close()

    def tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise StackError(f"timed out after {timeout:g}s waiting for {what}")


def wait_http(url: str, proc: Proc, timeout: float = 30) -> None:
    def up() -> bool:
        if not proc.alive():
            raise StackError(f"{proc.name} exited while starting:\n{proc.tail()}")
        try:
            return httpx.get(url, timeout=1).status_code < 500
        except httpx.HTTPError:
            return False

    wait_until(up, timeout, f"{proc.name} at {url}")


def wait_log(proc: Proc, needle: bytes, timeout: float = 60) -> None:
    def seen() -> bool:
        if not proc.alive():
            raise StackError(f"{proc.name} exited while starting:\n{proc.tail()}")
        return needle in proc.log_path.read_bytes()

    wait_until(seen, timeout, f"{proc.name} to log {needle.decode()!r}", interval=0.2)


@dataclass
class Procs:
    """Every process a scenario started; `stop_all` stops them newest first."""

    log_dir: Path
    procs: list[Proc] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        proc = Proc(f"{name}-{len(self.procs)}", argv, env, self.log_dir)
        self.procs.append(proc)
        return proc

    def stop(self, procs: list[Proc]) -> None:
        for proc in procs:
            proc.stop()
        self.procs = [p for p in self.procs if p not in procs]

    def stop_all(self) -> None:
        self.stop(list(reversed(self.procs)))


@contextlib.contextmanager
def process_scope(log_dir: Path) -> Iterator[Procs]:
    procs = Procs(log_dir)
    try:
        yield procs
    finally:
        procs.stop_all()


# --- the shared pieces -------------------------------------------------------------------------------------


def flush_redis(url: str = REDIS_URL) -> None:
    redis.Redis.from_url(url).flushdb()


def fresh_database(procs: Procs, env: dict[str, str], database: str = DATABASE) -> str:
    """Drop and create the benchmark database and migrate it with `service.cli migrate`; returns its DSN."""
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{database}"')
    migrate = procs.start("migrate", ["-m", "service.cli", "migrate"], env)
    if migrate.popen.wait(120) != 0:
        raise StackError(f"migrate failed:\n{migrate.tail()}")
    procs.stop([migrate])
    return PG_BASE + database


@dataclass(frozen=True)
class SimSpec:
    latency: str
    rpm: int | None
    tpm: int | None
    faults: tuple[str, ...] = ()
    output_tokens: int = 48


def start_simulator(procs: Procs, spec: SimSpec) -> str:
    port = free_port()
    argv = ["-m", "service.cli", "simulator", "--port", str(port), "--latency", spec.latency]
    argv += ["--rpm", str(spec.rpm or "none"), "--tpm", str(spec.tpm or "none")]
    argv += ["--output-tokens", str(spec.output_tokens), "--log-level", "warning", "--seed", "7"]
    for fault in spec.faults:
        argv += ["--fault", fault]
    proc = procs.start("simulator", argv, {})
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/healthz", proc)
    return url


def reset_simulator(sim_url: str) -> None:
    httpx.post(sim_url + "/_sim/reset", timeout=10).raise_for_status()


# --- our stack ----------------------------------------------------------------------------------------------


def service_env(
    sim_url: str, concurrency: int, *, database: str = DATABASE, redis_url: str = REDIS_URL
) -> dict[str, str]:
    return {
        "MMJOBS_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:5432/" + database,
        "MMJOBS_REDIS_URL": redis_url,
        "MINIMAX_API_KEY": SIM_KEY,
        "MINIMAX_BASE_URL": sim_url,
        "MMJOBS_WORKER_CONCURRENCY": str(concurrency),
        "MMJOBS_LOG_LEVEL": "INFO",
        # The benchmarks measure throughput from a few keys: no intake request rate (issue 14.3) in the way.
        "MMJOBS_REQUESTS_PER_MINUTE": "0",
        "MMJOBS_KEY_REQUESTS_PER_MINUTE": "0",
    }


@dataclass
class OurStack:
    api_url: str
    dsn: str
    workers: list[Proc]
    env: dict[str, str]
    api: Proc | None = None


def start_our_stack(
    procs: Procs,
    sim_url: str,
    *,
    workers: int,
    concurrency: int,
    api_workers: int,
    extra_env: dict[str, str] | None = None,
    database: str = DATABASE,
    redis_url: str = REDIS_URL,
) -> OurStack:
    env = {**service_env(sim_url, concurrency, database=database, redis_url=redis_url), **(extra_env or {})}
    flush_redis(redis_url)
    dsn = fresh_database(procs, env, database)
    port = free_port()
    api_argv = ["-m", "service.cli", "api", "--port", str(port), "--workers", str(api_workers)]
    api = procs.start("api", api_argv, env)
    api_url = f"http://127.0.0.1:{port}"
    wait_http(api_url + "/healthz", api, timeout=60)
    procs.start("scheduler", ["-m", "service.cli", "scheduler"], env)
    started = [
        procs.start("worker", ["-m", "service.cli", "worker", "--concurrency", str(concurrency)], env)
        for _ in range(workers)
    ]
    for proc in started:
        wait_log(proc, b" ready.")
    return OurStack(api_url=api_url, dsn=dsn, workers=started, env=env, api=api)


def create_key(procs: Procs, env: dict[str, str], tenant: str) -> str:
    """`service.cli keys create --tenant NAME`; the secret is the last line it prints."""
    proc = procs.start(f"keys-{tenant}", ["-m", "service.cli", "keys", "create", "--tenant", tenant], env)
    if proc.popen.wait(60) != 0:
        raise StackError(f"keys create failed:\n{proc.tail()}")
    procs.stop([proc])
    lines = [line.strip() for line in proc.log_path.read_text().splitlines() if line.strip()]
    if not lines:
        raise StackError("keys create printed nothing")
    return lines[-1]


# --- the baseline -------------------------------------------------------------------------------------------


def start_baseline_workers(procs: Procs, env: dict[str, str], *, workers: int, concurrency: int) -> list[Proc]:
    """`workers` Celery worker processes of the baseline app, threads pool with `concurrency` threads each."""
    flush_redis()
    started = []
    for i in range(workers):
        argv = ["-m", "celery", "-A", "benchmarks.baseline", "worker", "--pool", "threads"]
        argv += ["--concurrency", str(concurrency), "--queues", "bench_baseline", "-n", f"baseline{i}@%h"]
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "INFO"]
        started.append(procs.start("baseline-worker", argv, {**env, "BENCH_THREADS": str(concurrency)}))
    for proc in started:
        wait_log(proc, b" ready.", timeout=120)
    return started
