"""`python -m benchmarks.media [--quick]`: memory of the full stack under large payloads (issue 6).

Two workloads, each submitted all at once through the REST API (`POST /v1/jobs`, one request per job, all in
flight together; an API process reads only a few large bodies at once and answers the rest 503 with Retry-After,
which the client honours) to MiniMax-M3 on the simulator, then run by the workers:

- **videos**: 20 jobs, each with a 50 MB video inline as base64 (66.7 MB of base64, under the 64 MiB body limit);
- **documents**: 50 jobs, each a 4 MB text document (3.96 million characters, about 990,000 tokens: near M3's
  window, so every one is counted with count_tokens before its call).

Printed per workload: completion time, job statuses, the idle and peak PSS of the API process and of the worker
processes (sampled every 0.2 s with psutil, children included, summed; peak RSS beside it for reference), the
growth over the payload bytes in flight, and the Celery messages published (read from Redis' MONITOR stream):
their count and the largest, job ids only. `--quick` runs 5 videos and 10 documents. Written to RESULTS.md as the
section `media` (`--no-write` to print only).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

from benchmarks import stack
from benchmarks.metrics import MIB, MemorySampler
from benchmarks.report import machine, now, write_section
from benchmarks.stack import (
    PG_ADMIN_DSN,
    PG_BASE,
    SIM_KEY,
    OurStack,
    Procs,
    SimSpec,
    StackError,
    create_key,
    free_port,
    process_scope,
    start_simulator,
    wait_http,
    wait_log,
)

# A database and a Redis database of its own, so it can run beside `benchmarks.run`.
DATABASE = stack.DB_PREFIX + "mmjobs_bench_media"
REDIS_URL = stack.REDIS_SERVER + "/12"
VIDEO_BYTES = 50_000_000
DOCUMENT_CHARS = 3_960_000
WORKERS = 2
CONCURRENCY = 50
MODEL = "MiniMax-M3"
_WORDS = "contract clause party liability notice payment invoice delivery warranty breach remedy ".split()


@dataclass(frozen=True)
class Workload:
    name: str
    jobs: int
    payload_bytes: int
    body: bytes  # one request body; jobs differ only in their prompt, spliced in front of the shared payload


def video_workload(jobs: int) -> Workload:
    video = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00" + bytes(VIDEO_BYTES - 16)
    data = base64.b64encode(video).decode()
    source = {"type": "base64", "media_type": "video/mp4", "data": data, "fps": 1}
    content = [{"type": "video", "source": source}, {"type": "text", "text": "PROMPT"}]
    body = {"model": MODEL, "params": {"max_tokens": 256, "messages": [{"role": "user", "content": content}]}}
    return Workload("videos", jobs, len(data), json.dumps(body).encode())


def document_workload(jobs: int) -> Workload:
    words: list[str] = []
    length = 0
    while length < DOCUMENT_CHARS:
        word = _WORDS[len(words) % len(_WORDS)]
        words.append(word)
        length += len(word) + 1
    document = " ".join(words)[:DOCUMENT_CHARS]
    content = [{"type": "text", "text": document}, {"type": "text", "text": "PROMPT"}]
    body = {"model": MODEL, "params": {"max_tokens": 1000, "messages": [{"role": "user", "content": content}]}}
    return Workload("documents", jobs, len(document), json.dumps(body).encode())


SUBMIT_ATTEMPTS = 60


def submit(api_url: str, key: str, w: Workload) -> list[str]:
    """Every job at once, one thread each; a body is streamed from its parts (the shared payload is not copied).
    A 503 with Retry-After (an API process reads at most a few large bodies at once, service/api/large_bodies.py)
    is retried after the time it asks for, as a client should."""
    head, _, tail = w.body.partition(b'"PROMPT"')
    headers = {"Authorization": f"Bearer {key}", "content-type": "application/json"}

    def one(i: int) -> str:
        prompt = json.dumps(f"Summarize item {i}.").encode()
        headers_i = {**headers, "content-length": str(len(head) + len(prompt) + len(tail))}
        with httpx.Client(timeout=600) as client:
            for _ in range(SUBMIT_ATTEMPTS):
                r = client.post(f"{api_url}/v1/jobs", content=iter([head, prompt, tail]), headers=headers_i)
                if r.status_code != 503 or "retry-after" not in r.headers:
                    break
                time.sleep(float(r.headers["retry-after"]))
        if r.status_code != 202:
            raise RuntimeError(f"{w.name} job {i}: {r.status_code} {r.text[:300]}")
        return str(r.json()["id"])

    with ThreadPoolExecutor(w.jobs) as pool:
        return list(pool.map(one, range(w.jobs)))


class CelerySampler:
    """The largest message published to the Celery queue (`LPUSH mmjobs ...` on our Redis database), read from
    Redis' MONITOR stream while the workload runs, so even a message consumed within a millisecond is seen."""

    def __init__(self) -> None:
        self.redis = redis.Redis.from_url(REDIS_URL)
        self.db = int(REDIS_URL.rsplit("/", 1)[1])
        self.largest = 0
        self.seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CelerySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.redis.ping()  # one more command, so the monitor loop wakes up and sees the stop
        self._thread.join(5)

    def _run(self) -> None:
        with self.redis.monitor() as monitor:  # type: ignore[no-untyped-call]
            for command in monitor.listen():
                if self._stop.is_set():
                    return
                text = str(command.get("command", ""))
                if int(command.get("db", -1)) == self.db and text.upper().startswith("LPUSH MMJOBS"):
                    self.seen += 1
                    self.largest = max(self.largest, len(text) - len("LPUSH mmjobs "))


def wait_terminal(dsn: str, ids: list[str], timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as db:
        while True:
            rows = db.execute("SELECT status, count(*) FROM jobs WHERE id = ANY(%s) GROUP BY status", (ids,)).fetchall()
            statuses = {str(s): int(n) for s, n in rows}
            done = sum(n for s, n in statuses.items() if s in ("succeeded", "failed", "canceled", "expired"))
            if done >= len(ids) or time.monotonic() > deadline:
                return statuses
            time.sleep(0.5)


def start_stack(procs: Procs, sim_url: str, log_dir: Path) -> OurStack:
    env = {
        "MMJOBS_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:5432/" + DATABASE,
        "MMJOBS_REDIS_URL": REDIS_URL,
        "MINIMAX_API_KEY": SIM_KEY,
        "MINIMAX_BASE_URL": sim_url,
        "MMJOBS_WORKER_CONCURRENCY": str(CONCURRENCY),
        "MMJOBS_RATE_LIMITS": json.dumps({MODEL: {"rpm": 100_000, "tpm": 10_000_000_000}}),
        "MMJOBS_FILES_DIR": str(log_dir / "files"),
        "MMJOBS_LOG_LEVEL": "INFO",
    }
    redis.Redis.from_url(REDIS_URL).flushdb()
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DATABASE}"')
    migrate = procs.start("migrate", ["-m", "service.cli", "migrate"], env)
    if migrate.popen.wait(120) != 0:
        raise StackError(f"migrate failed:\n{migrate.tail()}")
    port = free_port()
    api = procs.start("api", ["-m", "service.cli", "api", "--port", str(port)], env)
    wait_http(f"http://127.0.0.1:{port}/healthz", api, timeout=60)
    procs.start("scheduler", ["-m", "service.cli", "scheduler"], env)
    argv = ["-m", "service.cli", "worker", "--concurrency", str(CONCURRENCY)]
    workers = [procs.start("worker", argv, env) for _ in range(WORKERS)]
    for worker in workers:
        wait_log(worker, b" ready.")
    return OurStack(api_url=f"http://127.0.0.1:{port}", dsn=PG_BASE + DATABASE, workers=workers, env=env)


def run(quick: bool, log_dir: Path, names: list[str]) -> list[dict[str, Any]]:
    workloads = [video_workload(5 if quick else 20)] if "videos" in names else []
    workloads += [document_workload(10 if quick else 50)] if "documents" in names else []
    rows = []
    with process_scope(log_dir) as procs:
        sim_url = start_simulator(procs, SimSpec(latency="1-2", rpm=None, tpm=None))
        stack = start_stack(procs, sim_url, log_dir)
        key = create_key(procs, stack.env, "bench-media")
        api = [p for p in procs.procs if p.name.startswith("api")]
        for w in workloads:
            print(f"- {w.name}: {w.jobs} jobs x {w.payload_bytes / 1e6:.1f} MB", flush=True)  # noqa: T201
            api_mem = MemorySampler([p.pid for p in api], 0.2)
            worker_mem = MemorySampler([p.pid for p in stack.workers], 0.2)
            api_mem.sample()
            worker_mem.sample()
            api_idle, workers_idle = api_mem.peak_pss, worker_mem.peak_pss
            with api_mem, worker_mem, CelerySampler() as celery:
                started = time.monotonic()
                ids = submit(stack.api_url, key, w)
                submitted = time.monotonic() - started
                statuses = wait_terminal(stack.dsn, ids, timeout=900)
                elapsed = time.monotonic() - started
            in_flight = w.jobs * w.payload_bytes
            rows.append(
                {
                    "workload": w.name,
                    "jobs": w.jobs,
                    "payload MB": round(w.payload_bytes / 1e6, 1),
                    "submit s": round(submitted, 1),
                    "done s": round(elapsed, 1),
                    "statuses": statuses,
                    "API idle / peak PSS MiB (peak RSS)": f"{api_idle / MIB:.0f} / {api_mem.peak_pss / MIB:.0f} "
                    f"({api_mem.peak_rss / MIB:.0f})",
                    "API PSS growth / payloads": round((api_mem.peak_pss - api_idle) / in_flight, 2),
                    "workers idle / peak PSS MiB (peak RSS)": f"{workers_idle / MIB:.0f} / "
                    f"{worker_mem.peak_pss / MIB:.0f} ({worker_mem.peak_rss / MIB:.0f})",
                    "workers PSS growth / payloads": round((worker_mem.peak_pss - workers_idle) / in_flight, 2),
                    "Celery messages": celery.seen,
                    "largest message B": celery.largest,
                }
            )
            print("  " + json.dumps(rows[-1]), flush=True)  # noqa: T201
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    names = list(rows[0])
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for row in rows:
        cells = [
            ", ".join(f"{k} {v}" for k, v in row[n].items()) if isinstance(row[n], dict) else str(row[n]) for n in names
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.media", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="5 videos and 10 documents")
    p.add_argument("--workload", choices=("videos", "documents"), action="append", help="run only this one")
    p.add_argument("--log-dir", type=Path, help="where process logs go (default: a new directory in /tmp)")
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = p.parse_args(argv)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="mmjobs-bench-media-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"process logs: {log_dir}", flush=True)  # noqa: T201
    when, load_before = now(), os.getloadavg()[0]
    rows = run(args.quick, log_dir, args.workload or ["videos", "documents"])
    body = "\n\n".join(
        [
            f"Measured {when:%Y-%m-%d %H:%M} UTC on {machine()}; 1-minute load average {load_before:.1f} before, "
            f"{os.getloadavg()[0]:.1f} after. Command: `python -m benchmarks.media"
            + (" --quick" if args.quick else "")
            + "`. One API process, the scheduler and 2 workers (threads pool, 50 each), simulator latency 1-2 s; "
            "memory is PSS summed over each part's processes (peak RSS in brackets, for reference).",
            table(rows),
        ]
    )
    print("\n" + body)  # noqa: T201
    if not args.no_write:
        print(f"written to {write_section('media', 'Memory under large payloads (issue 6)', body)}")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
