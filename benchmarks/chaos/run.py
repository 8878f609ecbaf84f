"""One chaos scenario: the whole stack as separate processes on the private Postgres and Redis, a batch submitted
through the REST API, the fault injected once part of the batch is done, then every job waited for and checked.

Used by `python -m benchmarks.chaos` and by tests/chaos (with the SMALL sizes).
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg

from benchmarks.chaos import measure
from benchmarks.chaos.infra import Infra
from benchmarks.chaos.measure import Sample, ScenarioResult
from benchmarks.chaos.receiver import received
from benchmarks.chaos.stack import FAULTS, ChaosConfig, Running, start_stack
from benchmarks.scenarios import MODEL, document
from benchmarks.stack import StackError, process_scope

# --- watching the jobs -------------------------------------------------------------------------------------------

_COUNTS_SQL = """
SELECT count(*),
       count(*) FILTER (WHERE status IN ('succeeded', 'failed', 'canceled', 'expired')),
       count(*) FILTER (WHERE status = 'succeeded'),
       count(*) FILTER (WHERE status = 'running'),
       count(*) FILTER (WHERE batch_id IS NOT NULL AND status IN ('succeeded', 'failed', 'canceled', 'expired'))
FROM jobs
"""


class Sampler(threading.Thread):
    """Reads the job counts from Postgres four times a second; rides out the database going away."""

    def __init__(self, dsn: str) -> None:
        super().__init__(name="chaos-sampler", daemon=True)
        self.dsn = dsn
        self.samples: list[Sample] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        while not self._stop_event.is_set():
            try:
                if conn is None:
                    conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=2)
                row = conn.execute(_COUNTS_SQL).fetchone()
                assert row is not None
                self.samples.append(Sample(time.monotonic(), *(int(x) for x in row)))
            except psycopg.Error:
                if conn is not None:
                    conn.close()
                conn = None
            self._stop_event.wait(0.25)
        if conn is not None:
            conn.close()

    def latest(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)


def _wait_for(what: str, predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.25)
    print(f"    timed out after {timeout:g} s waiting for {what}")  # noqa: T201
    return False


class SingleJobs(threading.Thread):
    """Submits one single job carrying the receiver's webhook_url every `every` seconds until stopped: each
    emits a job.* event, so events are written before, during and after the receiver's outage."""

    def __init__(self, r: Running, every: float) -> None:
        super().__init__(name="chaos-single-jobs", daemon=True)
        self.r = r
        self.every = every
        self.submitted = 0
        self.refused = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.r.key}"}
        with httpx.Client(base_url=self.r.api_url, headers=headers, timeout=30) as client:
            n = 0
            while not self._stop_event.wait(self.every):
                body = {"model": MODEL, "params": _params(n, "single"), "webhook_url": self.r.webhook_url}
                n += 1
                try:
                    ok = client.post("/v1/jobs", json=body).status_code == 202
                except httpx.HTTPError:
                    ok = False
                self.submitted += ok
                self.refused += not ok

    def stop(self) -> None:
        self._stop_event.set()
        self.join(60)


def _params(index: int, tenant: str) -> dict[str, Any]:
    return {"max_tokens": 256, "messages": [{"role": "user", "content": document(index, tenant, 40)}]}


def submit_batch(r: Running) -> str:
    requests = [{"custom_id": f"r{i}", "model": MODEL, "params": _params(i, "batch")} for i in range(r.cfg.requests)]
    body: dict[str, Any] = {"requests": requests}
    if r.webhook_url:
        body["webhook_url"] = r.webhook_url
    response = httpx.post(
        r.api_url + "/v1/batches", json=body, headers={"Authorization": f"Bearer {r.key}"}, timeout=300
    )
    if response.status_code >= 300:
        raise StackError(f"POST /v1/batches answered {response.status_code}: {response.text[:500]}")
    return str(response.json()["id"])


def _running_now(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute("SELECT count(*) FROM jobs WHERE status = 'running'").fetchone()
    return int(row[0]) if row else 0


# --- one scenario --------------------------------------------------------------------------------------------------


def run_scenario(name: str, cfg: ChaosConfig, infra: Infra, log_dir: Path) -> ScenarioResult:
    """Start a stack, submit the batch, inject the fault, wait, measure. Every process it started is stopped on the
    way out; errors are reported in the result rather than raised (the other scenarios still run)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    result = ScenarioResult(scenario=name)
    database = f"chaos_{name}"
    try:
        with process_scope(log_dir) as procs:
            r = start_stack(cfg, infra, procs, log_dir, database=database, receiver=name == "webhook_receiver_down")
            _drive(name, r, result, log_dir)
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:2000]
        print(f"    error: {result.error}")  # noqa: T201
    finally:
        # Postgres may be down if the scenario failed mid-fault; the next scenario needs it.
        if infra.postgres.proc is None or not infra.postgres.proc.alive():
            infra.postgres.start()
        if infra.redis.proc is None or not infra.redis.proc.alive():
            infra.redis.start()
        infra.postgres.drop_database(database)
    return result


def _drive(name: str, r: Running, result: ScenarioResult, log_dir: Path) -> None:
    cfg = r.cfg
    sampler = Sampler(r.dsn)
    singles = SingleJobs(r, cfg.single_job_every) if r.receiver else None
    batch_id = submit_batch(r)
    submitted = time.monotonic()
    sampler.start()
    if singles:
        singles.start()
    try:

        def due() -> bool:
            s = sampler.latest()
            return s is not None and s.batch_terminal >= cfg.inject_at * cfg.requests and s.running > 0

        if not _wait_for("the batch to get going", due, cfg.start_timeout):
            raise StackError(f"the batch did not reach {cfg.inject_at:.0%} in {cfg.start_timeout:g} s")
        result.in_flight_at_fault = _running_now(r.dsn)
        sim_in_flight = httpx.get(r.sim_url + "/_sim/stats", timeout=10).json()["in_flight"]
        fault_start = time.monotonic()
        print(f"    fault at +{fault_start - submitted:.1f} s: {result.in_flight_at_fault} jobs running")  # noqa: T201
        FAULTS[name](r)
        fault_end = time.monotonic()
        print(f"    fault over after {fault_end - fault_start:.1f} s")  # noqa: T201

        def batch_done() -> bool:
            s = sampler.latest()
            return s is not None and s.batch_terminal >= cfg.requests

        _wait_for("every batch request to be terminal", batch_done, cfg.timeout)
        if singles:
            singles.stop()

        def all_done() -> bool:
            s = sampler.latest()
            return s is not None and s.terminal >= s.total

        _wait_for("every job to be terminal", all_done, max(10.0, fault_end + cfg.timeout - time.monotonic()))
        ended_at = next((s.t for s in sampler.samples if s.t >= fault_start and _finished(s, cfg)), None)
        webhooks_after = _wait_webhooks(r, fault_end + cfg.webhook_timeout, fault_end) if r.receiver else None
    finally:
        if singles and singles.is_alive():
            singles.stop()
        sampler.stop()
    seconds, how = measure.recovery(sampler.samples, fault_start=fault_start, fault_end=fault_end, ended_at=ended_at)
    result.recover_seconds = seconds
    last = f"; last job terminal +{ended_at - fault_end:.1f} s" if ended_at is not None and how == "rate back" else ""
    result.recovery = ("n/a" if seconds is None else f"{seconds:.1f} s") + f" ({how}{last})"
    if r.receiver:
        result.recovery += "; every webhook event received " + (
            "n/a (not all before the deadline)" if webhooks_after is None else f"+{webhooks_after:.0f} s"
        )
    result.notes.append(
        f"fault at +{fault_start - submitted:.1f} s after submission, lasted {fault_end - fault_start:.1f} s; "
        f"the simulator had {sim_in_flight} calls open at that moment"
    )
    _collect(r, batch_id, result, log_dir, singles)
    (log_dir / "samples.json").write_text(json.dumps([dataclasses.astuple(s) for s in sampler.samples]))


def _finished(s: Sample, cfg: ChaosConfig) -> bool:
    return s.terminal >= s.total and s.batch_terminal >= cfg.requests


def _wait_webhooks(r: Running, deadline: float, fault_end: float) -> float | None:
    """Until every job.* and batch.ended event written so far was received at least once, or the deadline; returns
    the seconds from the end of the fault until then (None: the deadline came first)."""
    assert r.receiver_out is not None
    out = r.receiver_out

    def missing() -> int:
        with psycopg.connect(r.dsn, autocommit=True, connect_timeout=5) as conn:
            expected = {str(row[0]) for row in conn.execute(_EVENTS_SQL)}
        return len(expected - {str(d["id"]) for d in received(out)})

    shown = 0.0
    while time.monotonic() < deadline:
        left = missing()
        if left == 0:
            return time.monotonic() - fault_end
        if time.monotonic() - shown > 30:
            shown = time.monotonic()
            print(f"    {left} webhook events not received yet")  # noqa: T201
        time.sleep(2)
    return None


_EVENTS_SQL = "SELECT id, type FROM webhook_events WHERE type LIKE 'job.%' OR type = 'batch.ended'"
_JOBS_SQL = "SELECT id, custom_id, batch_id, status, lease_expires_at, dispatched_at FROM jobs"
_FAILED_SQL = """
SELECT error->>'classification', error->>'type', count(*) FROM jobs WHERE status = 'failed'
GROUP BY 1, 2 ORDER BY 3 DESC
"""
_ANSWERS_SQL = "SELECT result->>'upstream_request_id' FROM jobs WHERE status = 'succeeded'"
_ATTEMPTS_SQL = """
SELECT job_id, number, classification, upstream_request_id, http_status, error_type,
       extract(epoch FROM started_at)::float8, extract(epoch FROM ended_at)::float8
FROM job_attempts ORDER BY job_id, number
"""


def _collect(r: Running, batch_id: str, result: ScenarioResult, log_dir: Path, singles: SingleJobs | None) -> None:
    headers = {"Authorization": f"Bearer {r.key}"}
    with psycopg.connect(r.dsn, autocommit=True, connect_timeout=10) as conn:
        jobs = [dict(zip(("id", "custom_id", "batch_id", "status", "lease_expires_at", "dispatched_at"), row,
                         strict=True)) for row in conn.execute(_JOBS_SQL)]  # fmt: skip
        attempts = conn.execute(_ATTEMPTS_SQL).fetchall()
        events = {str(row[0]): str(row[1]) for row in conn.execute(_EVENTS_SQL)}
        failed = conn.execute(_FAILED_SQL).fetchall()
        # The call whose answer each succeeded job keeps as its result.
        answers = {str(row[0]) for row in conn.execute(_ANSWERS_SQL) if row[0]}
        deliveries: dict[str, int] = dict(
            conn.execute("SELECT status, count(*) FROM webhook_deliveries GROUP BY status").fetchall()
        )
        now = conn.execute("SELECT now()").fetchone()
    db_now: datetime = now[0] if now else datetime.now(UTC)
    statuses = Counter(str(j["status"]) for j in jobs)
    result.jobs = len(jobs)
    result.terminal = sum(n for s, n in statuses.items() if s in measure.TERMINAL)
    result.succeeded = statuses.get("succeeded", 0)
    result.failed = statuses.get("failed", 0)
    if failed:
        reasons = ", ".join(f"{n} {kind} ({classification})" for classification, kind, n in failed)
        result.notes.append(f"failed jobs by last error: {reasons}")
    expected_jobs = r.cfg.requests + (singles.submitted if singles else 0)
    if result.jobs != expected_jobs:
        result.notes.append(f"{expected_jobs} jobs submitted but {result.jobs} rows")

    with httpx.Client(base_url=r.api_url, headers=headers, timeout=120) as client:
        for job in jobs:
            if job["status"] in measure.TERMINAL:
                continue
            waiting = None
            try:
                waiting = client.get(f"/v1/jobs/{job['id']}").json().get("waiting")
            except (httpx.HTTPError, ValueError):
                pass
            why = measure.explain(job, waiting, now=db_now, redispatch_after=r.cfg.redispatch_after_seconds)
            label = why or f"lost ({job['status']}, waiting: {waiting})"
            result.waiting[label] = result.waiting.get(label, 0) + 1
            result.lost += why is None
        lines = [json.loads(line) for line in client.get(f"/v1/batches/{batch_id}/results").text.splitlines() if line]
        batch = client.get(f"/v1/batches/{batch_id}").json()
    custom_ids = [str(line["custom_id"]) for line in lines]
    succeeded_attempts = Counter(str(a[0]) for a in attempts if a[2] == "succeeded")
    dup_lines, dup_attempts = measure.duplicate_results(custom_ids, succeeded_attempts)
    result.duplicate_results = dup_lines + dup_attempts
    if dup_attempts:
        twice = [job for job, n in succeeded_attempts.items() if n > 1]
        result.notes.append(f"jobs with more than one succeeded attempt: {', '.join(twice[:5])}")
    batch_terminal = sum(1 for j in jobs if j["batch_id"] and j["status"] in measure.TERMINAL)
    if len(set(custom_ids)) != batch_terminal:
        result.notes.append(
            f"results file has {len(set(custom_ids))} custom_ids for {batch_terminal} terminal requests"
        )
    counts = batch.get("request_counts", {})
    if counts.get("processing") != r.cfg.requests - batch_terminal:
        result.notes.append(f"batch request_counts {counts} disagree with the jobs table")

    ledger = [e for snapshot in r.ledgers for e in snapshot["entries"]]
    ledger += httpx.get(r.sim_url + "/_sim/ledger", timeout=60).json()["entries"]
    result.duplicate_upstream, unmatched = measure.duplicate_upstream(ledger, answers)
    if unmatched:
        result.notes.append(f"{unmatched} succeeded jobs' answers have no completed call in the simulator's ledger")
    stats = httpx.get(r.sim_url + "/_sim/stats", timeout=10).json()
    by_outcome = ", ".join(f"{k} {v}" for k, v in sorted(stats.get("by_outcome", {}).items()))
    result.notes.append(f"{len(attempts):,} attempts recorded, {len(ledger):,} calls billed; simulator (since its "
                        f"last start): {by_outcome}")  # fmt: skip
    classes = Counter(str(a[2]) for a in attempts)
    result.notes.append("attempts by classification: " + ", ".join(f"{k} {v}" for k, v in sorted(classes.items())))

    if r.receiver_out is not None:
        got = {str(d["id"]) for d in received(r.receiver_out)}
        result.webhooks_expected = len(events)
        result.webhooks_delivered = len(set(events) & got)
        types = Counter(events.values())
        result.notes.append(
            f"webhook events: {dict(types)}; {len(received(r.receiver_out))} POSTs received for {len(got)} distinct "
            f"ids; deliveries by status {deliveries}"
            + (f"; {singles.submitted} single jobs submitted ({singles.refused} refused)" if singles else "")
        )

    with (log_dir / "attempts.jsonl").open("w") as f:
        keys = ("job_id", "number", "classification", "upstream_request_id", "http_status", "error_type", "started",
                "ended")  # fmt: skip
        for a in attempts:
            f.write(json.dumps(dict(zip(keys, a, strict=True))) + "\n")
    (log_dir / "ledger.json").write_text(json.dumps(ledger))
    (log_dir / "results.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
