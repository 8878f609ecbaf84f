"""Batch intake: 100,000 small requests accepted in one transaction, a 256 MB JSONL upload in bounded memory, and
(issue 14.2) the same 256 MB as one JSON batch body, alone and four at once.

    .venv/bin/python -m benchmarks.intake [--requests 100000] [--upload-mb 256] [--database NAME] [--redis-url URL]
                                          [--no-write]

Our API runs as a real process (`service.cli api`); its peak RSS (and PSS) is sampled every 0.1 s while each upload
runs. The baseline, measured in the same run against the same Postgres, is what a script usually does: build ORM
objects for every request and `session.add_all` + commit. The JSON batch's baseline is the whole-body parse the API
did before issue 14.2 (`json.loads` of the body, then `BatchCreate` over it), run on the same file in a process of
its own, its peak RSS growth measured the same way.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil
import psycopg

from benchmarks import stack
from benchmarks.report import results_path
from benchmarks.stack import PG_ADMIN_DSN, PG_BASE, Procs, StackError, create_key, free_port, process_scope, wait_http
from service.db import make_engine, make_session_factory, new_id
from service.models import Job, Tenant

DATABASE = stack.DB_PREFIX + "mmjobs_bench_intake"
REDIS_URL = stack.REDIS_SERVER + "/11"
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


def _pss(process: psutil.Process) -> int:
    try:
        return int(process.memory_full_info().pss)
    except (psutil.AccessDenied, AttributeError):  # no smaps: PSS unknown
        return 0


class PeakRSS:
    """The peak RSS and PSS of a process while the block runs, sampled every 0.1 s, and both just before."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.before = self.peak = self.process.memory_info().rss
        self.pss_before = self.pss_peak = _pss(self.process)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, self.process.memory_info().rss)
            self.pss_peak = max(self.pss_peak, _pss(self.process))

    @property
    def growth(self) -> int:
        return self.peak - self.before

    @property
    def pss_growth(self) -> int:
        return self.pss_peak - self.pss_before

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


def _post(api: str, key: str, path: Path, content_type: str) -> tuple[float, int, str]:
    """(seconds to the answer, status, the answer's start) for one streamed upload."""
    start = time.perf_counter()
    r = httpx.post(f"{api}/v1/batches", content=_chunks(path), timeout=900,
                   headers={"Authorization": f"Bearer {key}", "content-type": content_type})  # fmt: skip
    return time.perf_counter() - start, r.status_code, r.text[:300]


def _upload(
    api: str, key: str, path: Path, pid: int, content_type: str = "application/x-ndjson"
) -> tuple[float, int, int]:
    """(seconds to 202, API peak RSS during the upload, API RSS before)."""
    with PeakRSS(pid) as rss:
        elapsed, status, text = _post(api, key, path, content_type)
    if status != 202:
        raise StackError(f"upload answered {status}: {text}")
    return elapsed, rss.peak, rss.before


def _write_json(path: Path, jsonl: Path) -> int:
    """The JSONL's requests as one JSON batch body, the options after the requests (read last, as they come)."""
    with path.open("wb") as out, jsonl.open("rb") as lines:
        out.write(b'{"requests": [\n')
        for number, line in enumerate(lines):
            out.write((b",\n" if number else b"") + line.rstrip(b"\n"))
        out.write(b'\n], "metadata": {"bench": "json"}, "completion_window": "24h"}')
    return path.stat().st_size


@dataclass
class JsonRun:
    seconds: float
    statuses: list[int]
    rss: PeakRSS
    held_after: int  # RSS growth still held once every upload has answered


def _json_uploads(api: str, key: str, path: Path, pid: int, at_once: int) -> JsonRun:
    """`at_once` uploads of the same JSON body started together; the API's memory sampled throughout."""
    results: list[tuple[float, int, str]] = []
    go = threading.Barrier(at_once)

    def one() -> None:
        go.wait()
        results.append(_post(api, key, path, "application/json"))

    threads = [threading.Thread(target=one) for _ in range(at_once)]
    with PeakRSS(pid) as rss:
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start
    for _, status, text in results:
        if status not in (202, 503):
            raise StackError(f"JSON upload answered {status}: {text}")
    held = psutil.Process(pid).memory_info().rss - rss.before
    return JsonRun(seconds=elapsed, statuses=sorted(r[1] for r in results), rss=rss, held_after=held)


_OLD_PARSE = """
import json, resource, sys
import psutil
from service.batches.schemas import BatchCreate
before = psutil.Process().memory_info().rss
with open(sys.argv[1], "rb") as f:
    text = f.read()  # the old json_body: the spooled body read whole, parsed whole, validated whole
data = json.loads(text)
body = BatchCreate.model_validate(data)
print(len(body.requests), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before)
"""


def _old_parse_growth(path: Path) -> tuple[int, int]:
    """(requests, peak RSS growth in bytes) of the whole-body parse the API did before issue 14.2."""
    out = subprocess.run([sys.executable, "-c", _OLD_PARSE, str(path)], capture_output=True, check=True, timeout=900)
    n, growth = out.stdout.split()
    return int(n), int(growth)


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


def run(n: int, upload_mb: int, log_dir: Path, database: str = DATABASE, redis_url: str = REDIS_URL) -> str:
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{database}"')
    dsn = PG_BASE.replace("postgresql://", "postgresql+psycopg://") + database
    env = {"MMJOBS_DATABASE_URL": dsn, "MMJOBS_REDIS_URL": redis_url, "MMJOBS_LOG_LEVEL": "WARNING"}
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
        big_json = Path(tmp) / "big.json"
        json_bytes = _write_json(big_json, big)
        big.unlink()
        one = _json_uploads(url, key, big_json, api.pid, 1)
        four = _json_uploads(url, key, big_json, api.pid, 4)
        old_n, old_growth = _old_parse_growth(big_json)
        base_s = _baseline(dsn, n)
    mib = 1024 * 1024
    body_mib = json_bytes / mib
    one_ok = one.statuses == [202] and one.rss.growth < 0.25 * json_bytes
    four_ok = four.rss.growth < 1024 * mib and 202 in four.statuses
    accepted = f"{four.statuses.count(202)} x 202" + (
        f", {four.statuses.count(503)} x 503 (Retry-After)" if 503 in four.statuses else ""
    )
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
        "",
        f"JSON batch bodies (issue 14.2): the same {lines:,} requests as one {body_mib:.0f} MB "
        "`{\"requests\": [...], \"metadata\": ...}` body. Before: the API read the body whole "
        "(`json.loads`, then `BatchCreate`); now it reads it a request at a time (service/batches/json_stream.py).",
        "",
        "| metric | target | now (streamed) | before (whole-body parse) |",
        "|---|---|---|---|",
        f"| one {body_mib:.0f} MB JSON batch accepted | | {one.seconds:.1f} s | |",
        f"| API RSS growth during it | < 0.25 x body ({0.25 * body_mib:.0f} MiB) "
        f"| +{one.rss.growth / mib:.0f} MiB (PSS +{one.rss.pss_growth / mib:.0f} MiB) {'✓' if one_ok else '✗'} "
        f"| +{old_growth / mib:,.0f} MiB for the parse alone ({old_n:,} requests, same file, own process); "
        "issue 14 measured +408 MiB for a 114 MiB body |",
        f"| four {body_mib:.0f} MB JSON batches at once | | {accepted} in {four.seconds:.1f} s | |",
        f"| API RSS growth, four at once | < 1 GiB | +{four.rss.growth / mib:.0f} MiB "
        f"(PSS +{four.rss.pss_growth / mib:.0f} MiB) {'✓' if four_ok else '✗'} "
        "| issue 14: peak 3.25 GB, 1.1 GB still held afterwards |",
        f"| API RSS still held after the four | | +{four.held_after / mib:.0f} MiB | |",
    ])  # fmt: skip


def _migrate(procs: Procs, env: dict[str, str]) -> None:
    migrate = procs.start("migrate", ["-m", "service.cli", "migrate"], env)
    if migrate.popen.wait(120) != 0:
        raise StackError(f"migrate failed:\n{migrate.tail()}")
    procs.stop([migrate])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.intake", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="20,000 requests and a 64 MB upload (indicative)")
    parser.add_argument("--requests", type=int, help="small requests in one batch (default 100,000; --quick 20,000)")
    parser.add_argument("--upload-mb", type=int, help="size of the large upload (default 256; --quick 64)")
    parser.add_argument("--log-dir", type=Path, help="where process logs go (default: a temporary directory)")
    parser.add_argument("--database", default=DATABASE, help="Postgres database to (re)create for the run.")
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    requests = args.requests or (20_000 if args.quick else 100_000)
    upload_mb = args.upload_mb or (64 if args.quick else 256)
    with tempfile.TemporaryDirectory(prefix="mmjobs-intake-") as tmp:
        logs = args.log_dir or Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        table = run(requests, upload_mb, logs, args.database, args.redis_url)
    print(table)  # noqa: T201 - the benchmark's output
    if not args.no_write:
        results = results_path()
        text = results.read_text() if results.exists() else "# Benchmark results\n"
        section = f"{MARK_START}\n## Batch intake\n\n{table}\n{MARK_END}"
        if MARK_START in text:
            head, rest = text.split(MARK_START, 1)
            text = head + section + rest.split(MARK_END, 1)[1]
        else:
            text = text.rstrip() + "\n\n" + section + "\n"
        results.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
