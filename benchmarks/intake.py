"""Batch intake: 100,000 small requests accepted in one transaction, and a 256 MB JSONL upload in bounded memory.

    .venv/bin/python -m benchmarks.intake [--requests 100000] [--upload-mb 256] [--no-write]

Our API runs as a real process (`service.cli api`); its peak RSS is sampled every 0.1 s while each upload runs.
The baseline, measured in the same run against the same Postgres, is what a script usually does: build ORM objects
for every request and `session.add_all` + commit.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil
import psycopg

from benchmarks.stack import PG_ADMIN_DSN, PG_BASE, Procs, StackError, create_key, free_port, process_scope, wait_http
from service.db import make_engine, make_session_factory, new_id
from service.models import Job, Tenant

DATABASE = "mmjobs_bench_intake"
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
MARK_START, MARK_END = "<!-- section: intake -->", "<!-- end intake -->"


def _line(i: int, text: str) -> bytes:
    body = {"custom_id": f"r-{i}", "model": "MiniMax-M2.7",
            "params": {"max_tokens": 64, "messages": [{"role": "user", "content": text}]}}  # fmt: skip
    return json.dumps(body).encode() + b"\n"


def _write_jsonl(path: Path, n: int, text_for: int) -> int:
    filler = "lorem ipsum dolor sit amet " * max(1, text_for // 27)
    with path.open("wb") as out:
        for i in range(n):
            out.write(_line(i, f"document {i}: {filler}"))
    return path.stat().st_size


class PeakRSS:
    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _chunks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(size):
            yield chunk


def _upload(api: str, key: str, path: Path, pid: int) -> tuple[float, int, int]:
    """(seconds to 202, API peak RSS during the upload, API RSS before)."""
    before = psutil.Process(pid).memory_info().rss
    with PeakRSS(pid) as rss:
        start = time.perf_counter()
        r = httpx.post(f"{api}/v1/batches", content=_chunks(path), timeout=600,
                       headers={"Authorization": f"Bearer {key}", "content-type": "application/x-ndjson"})  # fmt: skip
        elapsed = time.perf_counter() - start
    if r.status_code != 202:
        raise StackError(f"upload answered {r.status_code}: {r.text[:500]}")
    return elapsed, rss.peak, before


def _baseline(dsn: str, n: int) -> float:
    """ORM objects + add_all + one commit: the usual script."""
    factory = make_session_factory(make_engine(dsn))
    now = datetime.now(UTC)
    with factory() as session:
        tenant = Tenant(id=new_id("ten"), name=f"baseline-{time.time()}")
        session.add(tenant)
        session.commit()
        start = time.perf_counter()
        session.add_all(
            Job(id=new_id("job"), tenant_id=tenant.id, model="MiniMax-M2.7", format="anthropic", status="queued",
                params={"max_tokens": 64, "messages": [{"role": "user", "content": f"document {i}"}]},
                meta={}, estimated_input_tokens=20, max_tokens=64, expires_at=now + timedelta(hours=24))
            for i in range(n)
        )  # fmt: skip
        session.commit()
        return time.perf_counter() - start


def run(n: int, upload_mb: int, log_dir: Path) -> str:
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DATABASE}"')
    dsn = PG_BASE.replace("postgresql://", "postgresql+psycopg://") + DATABASE
    env = {"MMJOBS_DATABASE_URL": dsn, "MMJOBS_REDIS_URL": "redis://127.0.0.1:6379/11", "MMJOBS_LOG_LEVEL": "WARNING"}
    with process_scope(log_dir) as procs, tempfile.TemporaryDirectory() as tmp:
        _migrate(procs, env)
        key = create_key(procs, env, "intake")
        port = free_port()
        api = procs.start("api", ["-m", "service.cli", "api", "--port", str(port)], env)
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/healthz", api, timeout=60)
        small = Path(tmp) / "small.jsonl"
        small_bytes = _write_jsonl(small, n, 40)
        small_s, small_peak, small_before = _upload(url, key, small, api.pid)
        big = Path(tmp) / "big.jsonl"
        lines = max(1, min(100_000, upload_mb * 1024 * 1024 // 4096))
        big_bytes = _write_jsonl(big, lines, upload_mb * 1024 * 1024 // lines - 200)
        big_s, big_peak, big_before = _upload(url, key, big, api.pid)
        base_s = _baseline(dsn, n)
    mib = 1024 * 1024
    return "\n".join([
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, `python -m benchmarks.intake` (API: one uvicorn process).",
        "",
        "| metric | target | minimax-jobs | baseline (ORM add_all + commit) |",
        "|---|---|---|---|",
        f"| {n:,} small requests ({small_bytes / mib:.0f} MB JSONL) accepted, one transaction | < 10 s "
        f"| {small_s:.1f} s {'✓' if small_s < 10 else '✗'} | {base_s:.1f} s (insert only, no validation) |",
        f"| API RSS growth during that upload | bounded | {(small_peak - small_before) / mib:.0f} MiB | |",
        f"| {big_bytes / mib:.0f} MB JSONL upload ({lines:,} requests) accepted | | {big_s:.1f} s | |",
        f"| API peak RSS during the {big_bytes / mib:.0f} MB upload | bounded | {big_peak / mib:.0f} MiB "
        f"(+{(big_peak - big_before) / mib:.0f} MiB) | |",
    ])  # fmt: skip


def _migrate(procs: Procs, env: dict[str, str]) -> None:
    migrate = procs.start("migrate", ["-m", "service.cli", "migrate"], env)
    if migrate.popen.wait(120) != 0:
        raise StackError(f"migrate failed:\n{migrate.tail()}")
    procs.stop([migrate])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.intake", description=__doc__)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--upload-mb", type=int, default=256)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mmjobs-intake-") as logs:
        table = run(args.requests, args.upload_mb, Path(logs))
    print(table)  # noqa: T201 - the benchmark's output
    if not args.no_write:
        text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
        section = f"{MARK_START}\n## Batch intake\n\n{table}\n{MARK_END}"
        if MARK_START in text:
            head, rest = text.split(MARK_START, 1)
            text = head + section + rest.split(MARK_END, 1)[1]
        else:
            text = text.rstrip() + "\n\n" + section + "\n"
        RESULTS.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
