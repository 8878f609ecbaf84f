"""Private infrastructure for the chaos driver: a Postgres cluster and a redis-server of its own, on free ports in a
temporary directory, so restarting them (the faults) never touches the machine's shared servers, and a small
webhook receiver process (benchmarks/chaos/receiver.py) that can be stopped and started on the same port."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis

from benchmarks.stack import ROOT, Proc, StackError, _die_with_parent, free_port, wait_until

PG_BIN = Path(os.environ.get("MMJOBS_CHAOS_PG_BIN", "/usr/lib/postgresql/15/bin"))
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def missing_tools() -> list[str]:
    """What this machine lacks to run the chaos scenarios (empty: everything is there)."""
    missing = [str(p) for p in (PG_BIN / "initdb", PG_BIN / "postgres", PG_BIN / "pg_ctl") if not p.exists()]
    if not Path(REDIS_SERVER).exists():
        missing.append("redis-server")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        missing.append("runuser")
    return missing


def _as_postgres(argv: list[str]) -> list[str]:
    # Postgres refuses to run as root: as root, run it as the `postgres` OS user; otherwise as ourselves.
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


class Program(Proc):
    """A Proc for a program that is not Python (postgres, redis-server): same log file, own process group and
    parent-death signal, same stop()."""

    def __init__(self, name: str, argv: list[str], log_dir: Path) -> None:
        # Not Proc.__init__: that one runs `sys.executable argv`.
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash or an OOM kill would, and reap it."""
        kill_group(self)


def kill_group(proc: Proc) -> None:
    """SIGKILL a Proc's whole process group (no cleanup) and close its log."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.popen.wait(10)
    proc.stop(grace=0)


class PrivatePostgres:
    """A throwaway cluster (initdb, trust auth) on 127.0.0.1:port. fsync is off (nothing here must survive an OS
    crash, and the shared disk is spared); synchronous_commit stays on, so a committed row survives the immediate
    (crash-like) stop of `crash`."""

    def __init__(self, root: Path, log_dir: Path) -> None:
        self.dir = root / "postgres"
        self.data = self.dir / "data"
        self.sockets = self.dir / "sockets"
        self.log_dir = log_dir
        self.port = free_port()
        self.proc: Program | None = None
        self.starts = 0
        self.sockets.mkdir(parents=True)
        if os.geteuid() == 0:
            # The postgres OS user must reach its directory: `root` is usually a mkdtemp (mode 0700, root's).
            root.chmod(0o755)
            shutil.chown(self.dir, "postgres", "postgres")
            shutil.chown(self.sockets, "postgres", "postgres")
        initdb = [str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8"]
        done = subprocess.run(_as_postgres([*initdb, "--no-sync"]), capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise StackError(f"initdb failed:\n{done.stdout}\n{done.stderr}")

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def dsn(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def url(self, database: str) -> str:
        """The SQLAlchemy URL our processes take (MMJOBS_DATABASE_URL)."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 60) -> None:
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.sockets),
            "max_connections": "300",
            "fsync": "off",
            "full_page_writes": "off",
            "shared_buffers": "64MB",
        }
        argv = [str(PG_BIN / "postgres"), "-D", str(self.data), "-p", str(self.port)]
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        self.starts += 1
        self.proc = Program(f"postgres-{self.starts}", _as_postgres(argv), self.log_dir)
        wait_until(self.accepting, timeout, f"the private Postgres on port {self.port}", interval=0.1)

    def accepting(self) -> bool:
        if self.proc is not None and not self.proc.alive():
            raise StackError(f"postgres exited while starting:\n{self.proc.tail()}")
        try:
            with psycopg.connect(self.admin_dsn, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def crash(self) -> None:
        """Immediate shutdown (`pg_ctl stop -m immediate`): every backend quits at once, no checkpoint; the next
        start runs crash recovery. What a killed or restarted database server looks like to its clients."""
        self._pg_ctl("immediate")

    def stop(self) -> None:
        if self.proc is not None and self.proc.alive():
            self._pg_ctl("fast")

    def _pg_ctl(self, mode: str) -> None:
        assert self.proc is not None
        argv = [str(PG_BIN / "pg_ctl"), "stop", "-D", str(self.data), "-m", mode, "-w", "-t", "60"]
        subprocess.run(_as_postgres(argv), capture_output=True, check=False, timeout=90)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.popen.wait(30)
        self.proc.stop(grace=5)

    def create_database(self, name: str) -> str:
        """Drop and create `name`; returns its SQLAlchemy URL."""
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with contextlib.suppress(psycopg.Error), psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class PrivateRedis:
    """redis-server on 127.0.0.1:port keeping nothing on disk (--save "" --appendonly no): a restart is empty."""

    def __init__(self, root: Path, log_dir: Path) -> None:
        self.dir = root / "redis"
        self.dir.mkdir(parents=True)
        self.log_dir = log_dir
        self.port = free_port()
        self.proc: Program | None = None
        self.starts = 0

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 30) -> None:
        argv = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        argv += ["--daemonize", "no", "--protected-mode", "no", "--dir", str(self.dir), "--maxclients", "2000"]
        self.starts += 1
        self.proc = Program(f"redis-{self.starts}", argv, self.log_dir)
        wait_until(self.answering, timeout, f"the private redis-server on port {self.port}", interval=0.05)

    def answering(self) -> bool:
        if self.proc is not None and not self.proc.alive():
            raise StackError(f"redis-server exited while starting:\n{self.proc.tail()}")
        try:
            return bool(redis.Redis.from_url(self.url(), socket_connect_timeout=1).ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        """SIGKILL: everything it held (broker messages, limiter windows, status) is gone."""
        if self.proc is not None:
            self.proc.kill()

    def flush(self) -> None:
        redis.Redis.from_url(self.url()).flushall()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(grace=5)


@dataclass
class Infra:
    """The private servers one chaos run shares between its scenarios (each scenario gets its own database)."""

    root: Path
    postgres: PrivatePostgres
    redis: PrivateRedis


@contextlib.contextmanager
def private_infra(root: Path, log_dir: Path) -> Iterator[Infra]:
    """Start a private Postgres and Redis under `root`; stop both (and delete their files) on the way out."""
    pg = PrivatePostgres(root, log_dir)
    rd = PrivateRedis(root, log_dir)
    try:
        pg.start()
        rd.start()
        yield Infra(root=root, postgres=pg, redis=rd)
    finally:
        rd.stop()
        pg.stop()
        if pg.proc is not None:
            pg.proc.stop(grace=5)
        shutil.rmtree(pg.dir, ignore_errors=True)
        shutil.rmtree(rd.dir, ignore_errors=True)


def wait_port_free(port: int, timeout: float = 10) -> None:
    """Until nothing listens on 127.0.0.1:port any more (a killed server's socket is gone)."""

    def free() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) != 0

    wait_until(free, timeout, f"port {port} to be released", interval=0.05)
