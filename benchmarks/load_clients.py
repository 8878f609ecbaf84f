"""The clients of `benchmarks.load`: each loops over the API's common calls with a connection of its own, and
records per endpoint the latency (to the last byte of the answer) and status of every request."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import ssl
import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import httpx

from benchmarks.metrics import percentile

MODEL = "MiniMax-M2.7"
RESULTS_SHARE = 0.02  # of client loops that also download their batch's results
TIMEOUT = 60.0
POST_JOB, GET_JOB, LIST_JOBS = "POST /v1/jobs", "GET /v1/jobs/{id}", "GET /v1/jobs?limit=20"
GET_BATCH, BATCH_RESULTS = "GET /v1/batches/{id}", "GET /v1/batches/{id}/results"
ENDPOINTS = (POST_JOB, GET_JOB, LIST_JOBS, GET_BATCH, BATCH_RESULTS)


@dataclass
class Stats:
    """One endpoint's outcomes: latencies (seconds) of answered requests, their statuses, transport errors."""

    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def requests(self) -> int:
        return len(self.latencies) + sum(self.errors.values())

    @property
    def server_errors(self) -> int:
        return sum(n for s, n in self.statuses.items() if s >= 500)

    @property
    def other_non_2xx(self) -> int:
        return sum(n for s, n in self.statuses.items() if not 200 <= s < 300 and s < 500)

    def merge(self, other: Stats) -> None:
        self.latencies += other.latencies
        self.statuses.update(other.statuses)
        self.errors.update(other.errors)


@dataclass
class Tenant:
    name: str
    key: str
    batch_id: str


def job_body(i: int) -> dict[str, object]:
    text = f"Classify ticket {i}: the printer on floor {i % 7} is out of toner again."
    return {"model": MODEL, "params": {"max_tokens": 64, "messages": [{"role": "user", "content": text}]}}


async def call(stats: dict[str, Stats], endpoint: str, request: Awaitable[httpx.Response]) -> httpx.Response | None:
    """One request (an httpx call not awaited yet), timed to the last byte of the answer; None if it got none."""
    started = time.perf_counter()
    try:
        response = await request
    except httpx.HTTPError as exc:
        stats[endpoint].errors[type(exc).__name__] += 1
        return None
    stats[endpoint].latencies.append(time.perf_counter() - started)
    stats[endpoint].statuses[response.status_code] += 1
    return response


async def client_loop(
    n: int, api_url: str, tenant: Tenant, deadline: float, stats: dict[str, Stats], tls: ssl.SSLContext
) -> None:
    rng = random.Random(n)
    headers = {"Authorization": f"Bearer {tenant.key}"}
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    # One TLS context for every client (unused over http, but httpx builds one per client otherwise: about 30 ms
    # of CPU each, which kept 200 clients from starting for several seconds).
    client = httpx.AsyncClient(base_url=api_url, headers=headers, timeout=TIMEOUT, limits=limits, verify=tls)
    async with client:
        # Spread the first requests over a second, as independent clients would arrive.
        await asyncio.sleep(rng.random())
        i = 0
        while time.monotonic() < deadline:
            i += 1
            r = await call(stats, POST_JOB, client.post("/v1/jobs", json=job_body(n * 100_000 + i)))
            if r is not None and r.status_code == 202 and time.monotonic() < deadline:
                await call(stats, GET_JOB, client.get(f"/v1/jobs/{r.json()['id']}"))
            if time.monotonic() < deadline:
                await call(stats, LIST_JOBS, client.get("/v1/jobs", params={"limit": 20}))
            if time.monotonic() < deadline:
                await call(stats, GET_BATCH, client.get(f"/v1/batches/{tenant.batch_id}"))
            if rng.random() < RESULTS_SHARE and time.monotonic() < deadline:
                await call(stats, BATCH_RESULTS, client.get(f"/v1/batches/{tenant.batch_id}/results"))


async def run_clients(
    api_url: str, tenants: list[Tenant], clients: int, seconds: float
) -> tuple[dict[str, Stats], float]:
    """Every client concurrently until the deadline (requests in flight then are finished and counted);
    (stats per endpoint, seconds from the start to the last answer)."""
    per_client = [{e: Stats() for e in ENDPOINTS} for _ in range(clients)]
    tls = ssl.create_default_context()
    started = time.monotonic()
    deadline = started + seconds
    tasks = [
        asyncio.create_task(client_loop(n, api_url, tenants[n % len(tenants)], deadline, per_client[n], tls))
        for n in range(clients)
    ]
    for tick in range(1, int(seconds // 10) + 1):
        await asyncio.sleep(max(0.0, started + 10 * tick - time.monotonic()))
        done = sum(s.requests for stats in per_client for s in stats.values())
        print(f"  {10 * tick:>4} s: {done:,} requests", flush=True)  # noqa: T201
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - started
    merged = {e: Stats() for e in ENDPOINTS}
    for stats in per_client:
        for e, s in stats.items():
            merged[e].merge(s)
    return merged, elapsed


@dataclass(frozen=True)
class ClientRun:
    stats: dict[str, Stats]
    elapsed: float  # seconds from the start to the last answer
    cpu_seconds: float  # the clients' process
    loop_wait: float  # share of the run the clients' event loop was runnable but waiting for a CPU
    priority: str  # what _own_session achieved


def run_clients_apart(api_url: str, tenants: list[Tenant], clients: int, seconds: float) -> ClientRun:
    """run_clients in a child process of its own session, with its autogroup at nice -10 when allowed.

    Linux's autogroup scheduling (kernel.sched_autogroup_enabled) shares a contended CPU equally between sessions
    first, and every process of the stack is a session of its own (start_new_session). The clients' single event
    loop needs little CPU (a tenth of a core), but in the session of the shell that started the benchmark it waited
    for a CPU most of the time on a saturated 2-core machine, and the latencies measured were then mostly its own
    wait. Remote clients would not share the API's CPUs at all."""
    receiver, sender = multiprocessing.Pipe(duplex=False)
    child = multiprocessing.get_context("spawn").Process(
        target=_clients_process, args=(sender, api_url, tenants, clients, seconds), name="load-clients"
    )
    child.start()
    sender.close()
    try:
        if not receiver.poll(seconds + TIMEOUT + 60):
            raise TimeoutError("the clients did not finish")
        result: ClientRun = receiver.recv()
    except BaseException:
        child.kill()
        raise
    finally:
        child.join(10)
    return result


def _clients_process(sender: Connection, api_url: str, tenants: list[Tenant], clients: int, seconds: float) -> None:
    os.setsid()
    try:
        Path("/proc/self/autogroup").write_text("-10")
        priority = "own session, autogroup nice -10"
    except OSError as exc:
        priority = f"own session, autogroup nice 0 ({exc.strerror})"
    before, cpu_before = _schedstat(), time.process_time()
    stats, elapsed = asyncio.run(run_clients(api_url, tenants, clients, seconds))
    after, cpu = _schedstat(), time.process_time() - cpu_before
    sender.send(ClientRun(stats, elapsed, cpu, (after[1] - before[1]) / 1e9 / elapsed, priority))


def _schedstat() -> tuple[int, int]:
    """(ns on a CPU, ns runnable but waiting for one) of this process's main thread, the event loop."""
    try:
        on_cpu, waiting, _ = Path(f"/proc/self/task/{os.getpid()}/schedstat").read_text().split()
    except (OSError, ValueError):
        return 0, 0
    return int(on_cpu), int(waiting)


# --- the table -------------------------------------------------------------------------------------------------


def _ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 1000:,.0f} ms" if x >= 0.1 else f"{x * 1000:,.1f} ms"


def table(stats: dict[str, Stats], elapsed: float, server: dict[str, list[float]]) -> str:
    """Client-side figures per endpoint, with the API's own durations (`server`, seconds, from its access log)."""
    lines = [
        "| endpoint | requests | p50 | p99 | max | in the API: p50 / p99 | 5xx | other non-2xx | no answer |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    total = Stats()
    for endpoint, s in stats.items():
        total.merge(s)
        lines.append(_row(endpoint, s, server.get(endpoint, [])))
    everything = [d for durations in server.values() for d in durations]
    lines.append(_row(f"**all** ({total.requests / elapsed:,.0f} requests/s)", total, everything))
    return "\n".join(lines)


def _row(label: str, s: Stats, server: list[float]) -> str:
    others = ", ".join(f"{k} {v}" for k, v in sorted(s.statuses.items()) if not 200 <= k < 300 and k < 500)
    errors = ", ".join(f"{k} {v}" for k, v in s.errors.most_common())
    return (
        f"| {label} | {s.requests:,} | {_ms(percentile(s.latencies, 50))} | {_ms(percentile(s.latencies, 99))} "
        f"| {_ms(max(s.latencies, default=None))} | {_ms(percentile(server, 50))} / {_ms(percentile(server, 99))} "
        f"| {s.server_errors:,} | {s.other_non_2xx:,}{f' ({others})' if others else ''} "
        f"| {sum(s.errors.values()):,}{f' ({errors})' if errors else ''} |"
    )


def endpoint_of(method: str, path: str) -> str | None:
    """Which of ENDPOINTS a request logged by the API was (None: another one)."""
    parts = path.strip("/").split("/")
    if method == "POST" and parts == ["v1", "jobs"]:
        return POST_JOB
    if method != "GET" or parts[:1] != ["v1"]:
        return None
    if parts[1:] == ["jobs"]:
        return LIST_JOBS
    if len(parts) == 3 and parts[1] == "jobs":
        return GET_JOB
    if len(parts) == 3 and parts[1] == "batches":
        return GET_BATCH
    if len(parts) == 4 and parts[1] == "batches" and parts[3] == "results":
        return BATCH_RESULTS
    return None
