"""`mmjobs up`: the whole service on one machine, for a first run and local development.

SQLite (unless MMJOBS_DATABASE_URL says otherwise), the local Redis, and API + worker + scheduler as
child processes; the bundled simulator stands in for MiniMax when MINIMAX_API_KEY is unset.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

import httpx
import redis
from rich.console import Console
from rich.panel import Panel

from service.config import SIMULATOR_API_KEY, Settings
from service.db import engine_for, make_session_factory, transaction
from service.migrate import upgrade
from service.tenants import service as tenants

DEV_TENANT = "dev"


def _check_redis(settings: Settings, console: Console) -> None:
    try:
        redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=2).ping()
    except redis.RedisError as exc:
        console.print(
            f"[bold red]Redis is not reachable at {settings.redis_url}[/] ({exc}).\n"
            "Start it, for example:\n"
            '  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no\n'
            "or point MMJOBS_REDIS_URL at a running Redis."
        )
        raise SystemExit(1) from None


def _dev_key(settings: Settings, data_dir: Path) -> str:
    """The development key: reused across runs while it still works, created otherwise."""
    path = data_dir / "dev-api-key"
    factory = make_session_factory(engine_for(settings))
    with transaction(factory) as session:
        if path.exists():
            secret = path.read_text().strip()
            if tenants.authenticate(session, secret=secret) is not None:
                return secret
        secret = tenants.create_key(session, tenant_name=DEV_TENANT, name="mmjobs up").secret
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return secret


def _wait_http(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with code {proc.returncode} while starting")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{what} did not answer at {url} within {timeout:.0f}s")


def run_embedded(settings: Settings, *, host: str, port: int, console: Console) -> None:
    data_dir = Path(settings.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env: dict[str, str] = {}
    if "database_url" not in settings.model_fields_set:
        env["MMJOBS_DATABASE_URL"] = f"sqlite:///{data_dir / 'mmjobs.db'}"
        settings = settings.model_copy(update={"database_url": env["MMJOBS_DATABASE_URL"]})
    _check_redis(settings, console)
    upgrade(settings.database_url)
    key = _dev_key(settings, data_dir)

    simulated = not settings.minimax_api_key
    import os

    # Three processes share this terminal: readable lines unless the user chose otherwise.
    child_env = {"MMJOBS_LOG_FORMAT": "console", **os.environ, **env}
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def spawn(name: str, *argv: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-m", *argv], env=child_env)
        procs.append((name, proc))
        return proc

    def stop_all(*_: object) -> None:
        for _name, proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
        for _name, proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        if simulated:
            sim_url = f"http://127.0.0.1:{settings.simulator_port}"
            child_env |= {"MINIMAX_BASE_URL": sim_url, "MINIMAX_API_KEY": SIMULATOR_API_KEY}
            sim = spawn(
                "simulator",
                "simulator",
                "--host",
                "127.0.0.1",
                "--port",
                str(settings.simulator_port),
                "--latency",
                "1-3",
            )
            _wait_http(sim_url + "/healthz", sim, "the simulator")
        api = spawn("api", "service.cli", "api", "--host", host, "--port", str(port))
        spawn("worker", "service.cli", "worker", "--concurrency", "50")
        spawn("scheduler", "service.cli", "scheduler")
        url = f"http://{host}:{port}"
        _wait_http(url + "/healthz", api, "the API")
        lines = [
            f"API          {url}",
            f"API docs     {url}/docs",
            f"API key      {key}   (tenant '{DEV_TENANT}', also saved in {data_dir / 'dev-api-key'})",
            f"Database     {settings.database_url}",
            f"Redis        {settings.redis_url}",
        ]
        if simulated:
            lines.insert(
                0,
                "[bold yellow]SIMULATED: MINIMAX_API_KEY is unset, so answers come from the bundled "
                f"MiniMax simulator at {child_env['MINIMAX_BASE_URL']}, not from MiniMax.[/]",
            )
        else:
            lines.insert(0, f"MiniMax      {settings.minimax_base_url}")
        lines.append(
            f"\nTry:  curl -s {url}/v1/jobs -H 'Authorization: Bearer {key}' "
            "-H 'content-type: application/json' "
            """-d '{"model": "MiniMax-M2.7", "params": {"max_tokens": 200, "messages": [{"role": "user", """
            """"content": "Hello"}]}}'"""
        )
        console.print(Panel("\n".join(lines), title="minimax-jobs is running (Ctrl-C stops it)"))
        while True:
            for name, proc in procs:
                if proc.poll() is not None:
                    console.print(f"[bold red]{name} exited with code {proc.returncode}; stopping[/]")
                    raise SystemExit(1)
            time.sleep(0.5)
    except KeyboardInterrupt:
        console.print("stopping...")
    finally:
        stop_all()
