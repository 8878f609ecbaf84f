"""Concurrency torture (issue 13 point 8): real processes, each with its own connections, on one database and one
Redis, do everything at once to the same batches for a bounded time, then the books must balance.

Roles (each a process of its own, released together by a barrier):
- 2 API clients: the real app (`create_app`, a real session factory that commits) behind a TestClient: submit
  batches (native and Anthropic drop-in) and single jobs, cancel batches and jobs, delete batches, read batches,
  results, jobs and usage. Any 5xx is a failure.
- 2 schedulers: `Scheduler.run_once` in a loop (lease recovery, expiry, cancel repair, dispatch under the shared
  limiter, webhooks, cron).
- 2 workers: the real `take` (one claim statement for a message's jobs) and `attempt` (call, finish, settle the
  permit), four threads each, taking the messages the schedulers published from the Celery queue in Redis, as
  Celery would. The upstream is a fake MiniMax inside the
  worker (an httpx transport) that answers at random: streams that succeed (some slowly), 500, 429, 400, a stream
  that breaks midway with an error event, a stream cut short. Each call the upstream accepted (anything but an
  HTTP error: it bills from then on) is recorded in Redis. In one message in twenty a "crashing" worker claims
  one of the jobs and vanishes (no outcome, no permit settled).
- 1 lease sweeper: `recover_expired_leases` at random moments (leases are 3 s).

Two tenants: `acme` with a tenant and a key budget (large), `tiny` with a small budget that runs out, a
concurrency cap of 3 and single jobs that expire after 8 s. After the chaos the test cancels, through the API,
whatever is still waiting, lets the schedulers and workers run until every job is final and the queue is empty,
and checks: no 5xx and no crashed role; every batch's counts equal its rows; every job final, its attempts
counted and closed; one ledger row per attempt that reported usage, with the same tokens; every call the
upstream billed in the ledger exactly once; the job, batch and budget totals equal the ledger; no budget hold
left; no limiter permit held for a call that is not running.
"""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import random
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import redis
from fastapi.testclient import TestClient
from sqlalchemy import text, update

from service.api.app import create_app
from service.config import Settings
from service.db import make_engine, make_session_factory, transaction, utcnow
from service.jobs import transitions
from service.models import Tenant
from service.tenants import service as tenants
from service.usage import budgets
from tests.db import drop_database, fresh_database, redis_url
from workers.dispatcher import permit_id
from workers.execution import attempt, take
from workers.runtime import Runtime
from workers.scheduler import Scheduler

CHAOS_SECONDS = 20.0
DRAIN_SECONDS = 60.0
LEASE_SECONDS = 3.0
MODEL = "MiniMax-M2.7"
DATABASE = "mmjobs_torture"
REDIS_DB = 11  # its own: test_limiter uses 12
QUEUE = "mmjobs"  # workers.celery_app.QUEUE; kombu's Redis transport LPUSHes, consumers BRPOP
RUN_JOB, RUN_JOBS = "mmjobs.run_job", "mmjobs.run_jobs"
BILLED = "torture:billed"  # message ids of the calls the fake upstream began answering
CRASHED = "torture:crashed"  # permit ids (job:attempt) held by claims whose worker vanished
TERMINAL = ("succeeded", "failed", "canceled", "expired")
INFLIGHT = "{mmjobs:rl}:t:%s:inflight"  # workers/limiter: a tenant's concurrency slots, score = hold expiry


@dataclass(frozen=True)
class World:
    database_url: str
    redis_url: str
    keys: dict[str, str]  # tenant name -> API key secret
    tenant_ids: dict[str, str]


def _settings(world: World, *, pool: int, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": world.database_url,
        "redis_url": world.redis_url,
        "minimax_api_key": "sk-torture",
        "minimax_base_url": "http://upstream.torture",
        "lease_seconds": LEASE_SECONDS,
        "lease_refresh_seconds": 0.5,
        "redispatch_after_seconds": 3.0,
        "scheduler_interval": 0.1,
        "retry_base_seconds": 0.05,
        "retry_cap_seconds": 0.5,
        "rate_limits": {MODEL: {"rpm": 1_000_000, "tpm": 1_000_000_000}},
        "max_unclaimed": 12,  # a short queue: a new job starts soon even behind batches
        "job_expiry_seconds": 8,
        "db_pool_size": pool,
        "db_max_overflow": 0,
        "log_level": "ERROR",
        "worker_shutdown_grace_seconds": 0,
        # The API clients drive one key as fast as they can, far past the per-key request rate (issue 14.3), which
        # is not what this test races: with intake faster (issue 17.1) they reached it and most answers were 429.
        "requests_per_minute": 0,
        "key_requests_per_minute": 0,
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Report:
    role: str
    problems: list[str]
    stats: dict[str, int]


def _run_role(
    name: str, body: Callable[[Report, float, Any], None], barrier: Any, stop: Any, reports: Any, seconds: float
) -> None:
    """A role's process: set up, wait for everyone at the barrier, run, and always report."""
    report = Report(role=name, problems=[], stats={})
    try:
        barrier.wait(180)
        body(report, time.monotonic() + seconds, stop)
    except BaseException:
        report.problems.append(f"{name} crashed:\n{traceback.format_exc()[-3000:]}")
    finally:
        reports.put(report)


# --- API clients ------------------------------------------------------------------------------------------------


def _params(rng: random.Random, *, slow: bool = False) -> dict[str, Any]:
    text = f"torture {uuid.uuid4().hex[:8]}" + (" [slow]" if slow else "")
    return {"max_tokens": rng.choice([16, 64, 256]), "messages": [{"role": "user", "content": text}]}


def api_role(world: World, seed: int, barrier: Any, stop: Any, reports: Any) -> None:
    rng = random.Random(seed)
    # Single jobs of the first client expire after 8 s (some do while the small tenant waits), the second's later.
    settings = _settings(world, pool=3, job_expiry_seconds=8 if seed == 1 else 60)

    with TestClient(create_app(settings), raise_server_exceptions=False) as client:

        def body(report: Report, until: float, _stop: Any) -> None:
            _api_chaos(client, world, rng, report, until)

        _run_role(f"api-{seed}", body, barrier, stop, reports, CHAOS_SECONDS)


def _api_chaos(client: TestClient, world: World, rng: random.Random, report: Report, until: float) -> None:
    known: dict[str, tuple[str, str]] = {}  # batch id -> (tenant, api)

    def call(method: str, path: str, tenant: str, expected: tuple[int, ...], **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {world.keys[tenant]}", **kwargs.pop("headers", {})}
        r = client.request(method, path, headers=headers, **kwargs)
        label = f"{method} {path.split('?')[0]}"
        report.stats[f"http_{r.status_code}"] = report.stats.get(f"http_{r.status_code}", 0) + 1
        if r.status_code >= 500 or r.status_code not in expected:
            report.problems.append(f"{label} ({tenant}) answered {r.status_code}: {r.text[:400]}")
        return r

    def learn() -> None:
        for tenant in world.keys:
            for api, path in (("native", "/v1/batches?limit=50"), ("anthropic", "/anthropic/v1/messages/batches")):
                r = call("GET", path, tenant, (200,))
                if r.status_code == 200:
                    for b in r.json()["data"]:
                        known[b["id"]] = (tenant, api)

    def submit_batch(tenant: str) -> None:
        n = rng.randint(2, 15)
        if rng.random() < 0.25:
            requests = [{"custom_id": f"r{i}", "params": {"model": MODEL, **_params(rng)}} for i in range(n)]
            r = call("POST", "/anthropic/v1/messages/batches", tenant, (200,), json={"requests": requests})
            if r.status_code == 200:
                known[r.json()["id"]] = (tenant, "anthropic")
            return
        requests = [{"custom_id": f"r{i}", "model": MODEL, "params": _params(rng)} for i in range(n)]
        r = call("POST", "/v1/batches", tenant, (202,), json={"requests": requests})
        if r.status_code == 202:
            known[r.json()["id"]] = (tenant, "native")

    def submit_job(tenant: str) -> None:
        # 402: the small budget is used up (refused at intake, nothing stored).
        # Half of them slow, so that cancels often find them running.
        params = _params(rng, slow=rng.random() < 0.5)
        call("POST", "/v1/jobs", tenant, (202, 402), json={"model": MODEL, "params": params})

    def pick() -> tuple[str, str, str] | None:
        if not known:
            return None
        batch_id = rng.choice(sorted(known))
        return (batch_id, *known[batch_id])

    def cancel_batch(_tenant: str) -> None:
        picked = pick()
        if picked is None:
            return
        batch_id, tenant, api = picked
        if api == "anthropic":
            call("POST", f"/anthropic/v1/messages/batches/{batch_id}/cancel", tenant, (200, 404))
        else:
            call("POST", f"/v1/batches/{batch_id}/cancel", tenant, (200, 404))

    def delete_batch(_tenant: str) -> None:
        picked = pick()
        if picked is None:
            return
        batch_id, tenant, api = picked
        prefix = "/anthropic/v1/messages/batches" if api == "anthropic" else "/v1/batches"
        # Not ended yet: 409 (native), 400 (the Anthropic drop-in, as Anthropic answers).
        r = call("DELETE", f"{prefix}/{batch_id}", tenant, (200, 204, 400, 404, 409))
        if r.status_code in (200, 204, 404):
            known.pop(batch_id, None)

    def read_batch(_tenant: str) -> None:
        picked = pick()
        if picked is None:
            return
        batch_id, tenant, api = picked
        if api == "anthropic":
            call("GET", f"/anthropic/v1/messages/batches/{batch_id}", tenant, (200, 404))
            return
        call("GET", f"/v1/batches/{batch_id}", tenant, (200, 404))
        call("GET", f"/v1/batches/{batch_id}/results", tenant, (200, 404))

    def cancel_job(tenant: str) -> None:
        # Mostly a running one: its call is stopped, and what the upstream billed so far must still be billed.
        listing = "/v1/jobs?limit=50&status=running" if rng.random() < 0.7 else "/v1/jobs?limit=50"
        r = call("GET", listing, tenant, (200,))
        if r.status_code == 200 and r.json()["data"]:
            job = rng.choice(r.json()["data"])
            call("POST", f"/v1/jobs/{job['id']}/cancel", tenant, (200, 404, 409))

    def cancel_mid_call(_tenant: str) -> None:
        """A slow job canceled once its call is under way: the call stops, and its worker bills what the
        upstream billed so far."""
        params = _params(rng, slow=True)
        r = call("POST", "/v1/jobs", "acme", (202,), json={"model": MODEL, "params": params})
        if r.status_code != 202:
            return
        job_id = r.json()["id"]
        give_up = time.monotonic() + 30
        while time.monotonic() < give_up:
            status = call("GET", f"/v1/jobs/{job_id}", "acme", (200,)).json().get("status")
            if status != "queued":
                break
        call("POST", f"/v1/jobs/{job_id}/cancel", "acme", (200, 409))

    def usage(tenant: str) -> None:
        call("GET", "/v1/usage", tenant, (200,))

    actions: list[tuple[float, Callable[[str], None]]] = [
        (0.25, submit_batch),
        (0.20, submit_job),
        (0.08, cancel_batch),
        (0.10, delete_batch),
        (0.20, read_batch),
        (0.09, cancel_job),
        (0.06, cancel_mid_call),
        (0.04, usage),
        (0.04, lambda _t: learn()),
    ]
    weights = [w for w, _ in actions]
    if client.app.state.settings.job_expiry_seconds > 8:  # type: ignore[attr-defined]
        cancel_mid_call("acme")  # at least once a run
    while time.monotonic() < until:
        tenant = rng.choice(sorted(world.keys))
        rng.choices(actions, weights)[0][1](tenant)


# --- schedulers and the lease sweeper ---------------------------------------------------------------------------


def scheduler_role(world: World, seed: int, barrier: Any, stop: Any, reports: Any) -> None:
    rng = random.Random(seed)
    scheduler = Scheduler(_settings(world, pool=3))

    def body(report: Report, _until: float, stop: Any) -> None:
        while not stop.is_set():
            try:
                scheduler.run_once()
                report.stats["passes"] = report.stats.get("passes", 0) + 1
            except Exception as exc:
                report.problems.append(f"scheduler pass raised {type(exc).__name__}: {str(exc)[:400]}")
            stop.wait(rng.uniform(0, 0.1))

    _run_role(f"scheduler-{seed}", body, barrier, stop, reports, 0)


def sweeper_role(world: World, seed: int, barrier: Any, stop: Any, reports: Any) -> None:
    rng = random.Random(seed)
    factory = make_session_factory(make_engine(world.database_url, pool_size=1, max_overflow=0))

    def body(report: Report, _until: float, stop: Any) -> None:
        while not stop.is_set():
            try:
                with transaction(factory) as session:
                    recovered = transitions.recover_expired_leases(session)
                report.stats["recovered"] = report.stats.get("recovered", 0) + len(recovered)
            except Exception as exc:
                report.problems.append(f"recover_expired_leases raised {type(exc).__name__}: {str(exc)[:400]}")
            stop.wait(rng.uniform(0, 0.3))

    _run_role(f"sweeper-{seed}", body, barrier, stop, reports, 0)


# --- workers and the fake upstream ------------------------------------------------------------------------------


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


class FakeUpstream:
    """MiniMax's Anthropic-compatible Messages endpoint, streaming, with random outcomes. A call it accepts (any
    answer but an HTTP error) is recorded as billed: the upstream counts the input from then on, even if the
    caller hangs up before reading a byte."""

    def __init__(self, client: redis.Redis, seed: int) -> None:
        self.redis = client
        self.rng = random.Random(seed)
        self._lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        slow = b"[slow]" in request.content
        with self._lock:
            roll = self.rng.random()
            pieces = self.rng.randint(2, 6) if not slow else 6
            # One call in ten is slow, and every one asked to be: ~2.5 s, while a cancel may come.
            pause = 0.4 if slow or roll < 0.1 else self.rng.choice([0.0, 0.02, 0.05])
            input_tokens = self.rng.randint(10, 400)
        if 0.72 <= roll < 0.80:
            return self._error(500, "api_error", "internal error")
        if 0.80 <= roll < 0.82:
            return self._error(429, "rate_limit_error", "rate limit exceeded (1002)")
        if 0.82 <= roll < 0.90:
            return self._error(400, "invalid_request_error", "invalid params (2013)")
        kind = "ok" if roll < 0.72 else "midstream" if roll < 0.96 else "cut"
        message_id = f"msg_{uuid.uuid4().hex}"
        # Accepted: billed from here on, whether or not the caller reads the answer (or hangs up early).
        self.redis.sadd(BILLED, message_id)
        stream = self._stream(kind, message_id, input_tokens, pieces, pause)
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=stream)

    @staticmethod
    def _error(status: int, kind: str, message: str) -> httpx.Response:
        return httpx.Response(status, json={"type": "error", "error": {"type": kind, "message": message}})

    def _stream(self, kind: str, message_id: str, input_tokens: int, pieces: int, pause: float) -> Iterator[bytes]:
        start: dict[str, Any] = {"id": message_id, "type": "message", "role": "assistant", "model": MODEL,
                                 "content": [], "stop_reason": None,
                                 "usage": {"input_tokens": input_tokens, "output_tokens": 1}}  # fmt: skip
        yield _sse("message_start", {"type": "message_start", "message": start})
        yield _sse("content_block_start", {"type": "content_block_start", "index": 0,
                                           "content_block": {"type": "text", "text": ""}})  # fmt: skip
        for i in range(pieces):
            if pause:
                time.sleep(pause)
            if kind == "midstream" and i == pieces // 2:
                error = {"type": "api_error", "message": "stream interrupted (1000)"}
                yield _sse("error", {"type": "error", "error": error})
                return
            delta = {"type": "text_delta", "text": f"word{i} " * 3}
            yield _sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
        if kind == "cut":
            return
        yield _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
        usage = {"input_tokens": input_tokens, "output_tokens": 4 * pieces}
        stop = {"stop_reason": "end_turn", "stop_sequence": None}
        yield _sse("message_delta", {"type": "message_delta", "delta": stop, "usage": usage})
        yield _sse("message_stop", {"type": "message_stop"})


def _job_ids(message: Any) -> list[str]:
    """The job ids of a Celery run_jobs (or run_job) message as kombu's Redis transport stores it (none: another
    task)."""
    envelope = json.loads(message)
    task = envelope["headers"]["task"]
    if task not in (RUN_JOB, RUN_JOBS):
        return []
    args = json.loads(base64.b64decode(envelope["body"]))[0]
    return [str(job_id) for job_id in args[0]] if task == RUN_JOBS else [str(args[0])]


def worker_role(world: World, seed: int, barrier: Any, stop: Any, reports: Any) -> None:
    settings = _settings(world, pool=6)
    rt = Runtime(settings)
    client = redis.Redis.from_url(world.redis_url)
    rt.upstream_clients.close()
    rt.upstream_clients.clients = [httpx.Client(transport=httpx.MockTransport(FakeUpstream(client, seed)))]
    lock = threading.Lock()

    def thread(report: Report, rng: random.Random, stop: Any) -> None:
        crash_next = True  # each thread's first claimable job, then one in twenty
        while not stop.is_set():
            popped = client.brpop([QUEUE], timeout=0.2)
            if popped is None:
                continue
            job_ids = _job_ids(popped[1])
            if not job_ids:
                continue
            try:
                if crash_next or rng.random() < 0.05:
                    # A worker killed mid-call: it holds the claim of one of the message's jobs and its permit and
                    # never says anything again; the message's other jobs run.
                    victim = rng.choice(job_ids)
                    with transaction(rt.session_factory) as session:
                        claim = transitions.claim(
                            session, job_id=victim, owner=f"crashed-{os.getpid()}", lease_seconds=LEASE_SECONDS
                        )
                    if claim is not None:
                        crash_next = False
                        client.sadd(CRASHED, permit_id(claim.job_id, claim.number))
                        with lock:
                            report.stats["crashed"] = report.stats.get("crashed", 0) + 1
                        job_ids.remove(victim)
                # The real claim of a message's jobs (one statement), then each job's attempt in turn.
                for claim, handle in take(job_ids, rt=rt):
                    attempt(claim, handle, rt=rt)
                    with lock:
                        report.stats["run_job"] = report.stats.get("run_job", 0) + 1
            except Exception as exc:
                with lock:
                    report.problems.append(f"run_jobs({job_ids}) raised {type(exc).__name__}: {str(exc)[:400]}")

    def body(report: Report, _until: float, stop: Any) -> None:
        threads = [
            threading.Thread(target=thread, args=(report, random.Random(seed * 100 + i), stop)) for i in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    _run_role(f"worker-{seed}", body, barrier, stop, reports, 0)


# --- the test ---------------------------------------------------------------------------------------------------


def _setup() -> World:
    url = fresh_database(DATABASE)
    rurl = redis_url(REDIS_DB)
    redis.Redis.from_url(rurl).flushdb()
    engine = make_engine(url, pool_size=1, max_overflow=0)
    factory = make_session_factory(engine)
    keys: dict[str, str] = {}
    tenant_ids: dict[str, str] = {}
    now = utcnow()
    with transaction(factory) as session:
        for name in ("acme", "tiny"):
            new = tenants.create_key(session, tenant_name=name)
            session.flush()
            keys[name], tenant_ids[name] = new.secret, new.key.tenant_id
            key_id = new.key.id
            if name == "acme":
                budgets.upsert(session, tenant_id=new.key.tenant_id, api_key_id=None, period="monthly",
                               limit_usd=Decimal(1000), soft_limit_usd=Decimal("0.001"), now=now)  # fmt: skip
                budgets.upsert(session, tenant_id=new.key.tenant_id, api_key_id=key_id, period="total",
                               limit_usd=Decimal(1000), soft_limit_usd=None, now=now)  # fmt: skip
            else:
                # Runs out during the run: requests then wait for budget (batches) or are refused (jobs).
                budgets.upsert(session, tenant_id=new.key.tenant_id, api_key_id=None, period="monthly",
                               limit_usd=Decimal("0.004"), soft_limit_usd=None, now=now)  # fmt: skip
                session.execute(update(Tenant).where(Tenant.id == new.key.tenant_id).values(concurrency_limit=3))
    engine.dispose()
    return World(database_url=url, redis_url=rurl, keys=keys, tenant_ids=tenant_ids)


def _drain(world: World) -> list[str]:
    """What a user does at the end: cancel every batch still running and every job still waiting. A 5xx is a
    problem to report, and the user tries again."""
    problems: list[str] = []
    settings = _settings(world, pool=2)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:

        def cancel(path: str, auth: dict[str, str], ok: tuple[int, ...]) -> None:
            for _ in range(5):
                r = client.post(path, headers=auth)
                if r.status_code in ok:
                    return
                problems.append(f"drain: POST {path} answered {r.status_code}: {r.text[:300]}")

        for secret in world.keys.values():
            auth = {"Authorization": f"Bearer {secret}"}
            for path in ("/v1/batches", "/anthropic/v1/messages/batches"):
                cursor: str | None = None
                while True:
                    param = "after_id" if path.startswith("/anthropic") else "cursor"
                    r = client.get(path, params={"limit": 100, **({param: cursor} if cursor else {})}, headers=auth)
                    if r.status_code != 200:
                        problems.append(f"drain: GET {path} answered {r.status_code}: {r.text[:300]}")
                        break
                    page = r.json()
                    for b in page["data"]:
                        if b["processing_status"] == "in_progress":
                            cancel(f"{path}/{b['id']}/cancel", auth, (200,))
                    if not page["has_more"]:
                        break
                    cursor = page["data"][-1]["id"]
            r = client.get("/v1/jobs", params={"limit": 200, "status": ["queued", "retrying", "running"]}, headers=auth)
            if r.status_code != 200:
                problems.append(f"drain: GET /v1/jobs answered {r.status_code}: {r.text[:300]}")
                continue
            for job in r.json()["data"]:
                cancel(f"/v1/jobs/{job['id']}/cancel", auth, (200, 409))
    return problems


def _rows(world: World, sql: str, **params: Any) -> list[Any]:
    engine = make_engine(world.database_url, pool_size=1, max_overflow=0)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql), params).all())
    finally:
        engine.dispose()


def _settled(world: World) -> bool:
    live = _rows(world, "SELECT count(*) FROM jobs WHERE status NOT IN ('succeeded','failed','canceled','expired')")
    return int(live[0][0]) == 0 and int(redis.Redis.from_url(world.redis_url).llen(QUEUE)) == 0


def test_torture() -> None:
    world = _setup()
    # fork: the children start with everything imported (spawn re-imports the app in each, which took a minute
    # on a busy 2-core machine). Each builds its own engines, Redis clients and Celery app after the fork.
    ctx = multiprocessing.get_context("fork")
    roles: list[tuple[Callable[..., None], int]] = [
        (api_role, 1), (api_role, 2), (scheduler_role, 3), (scheduler_role, 4),
        (worker_role, 5), (worker_role, 6), (sweeper_role, 7),
    ]  # fmt: skip
    barrier = ctx.Barrier(len(roles) + 1)
    stop = ctx.Event()
    queue = ctx.Queue()
    procs = [ctx.Process(target=fn, args=(world, seed, barrier, stop, queue), daemon=True) for fn, seed in roles]
    problems: list[str] = []
    reports: list[Report] = []
    try:
        for p in procs:
            p.start()
        barrier.wait(180)  # every role has set up; the chaos starts for all at once
        api = [p for p, (fn, _) in zip(procs, roles, strict=True) if fn is api_role]
        for p in api:
            p.join(CHAOS_SECONDS + 120)
        problems.extend(_drain(world))
        deadline = time.monotonic() + DRAIN_SECONDS
        while not _settled(world) and time.monotonic() < deadline:
            stop.wait(0.25)
        if not _settled(world):
            stuck = _rows(world, "SELECT id, batch_id, status, lease_owner, lease_expires_at, dispatched_at, "
                          "attempt_count FROM jobs WHERE status NOT IN ('succeeded','failed','canceled','expired') "
                          "ORDER BY id LIMIT 20")  # fmt: skip
            queued = redis.Redis.from_url(world.redis_url).llen(QUEUE)
            problems.append(f"not settled {DRAIN_SECONDS:.0f}s after the drain (queue {queued}): {stuck}")
    finally:
        stop.set()
        for _ in procs:
            try:
                reports.append(queue.get(timeout=60))
            except Exception:
                break
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    assert len(reports) == len(procs), f"only {len(reports)} of {len(procs)} roles reported"
    for report in reports:
        problems.extend(f"[{report.role}] {p}" for p in report.problems[:10])
        if len(report.problems) > 10:
            problems.append(f"[{report.role}] ... and {len(report.problems) - 10} more")
    stats = {r.role: r.stats for r in reports}
    problems.extend(_check_books(world))
    try:
        assert not problems, "\n".join(problems) + f"\nstats: {stats}"
        # The run did what it is for: every path was taken.
        passes = sum(s.get("passes", 0) for s in stats.values())
        calls = sum(s.get("run_job", 0) for s in stats.values())
        crashed = sum(s.get("crashed", 0) for s in stats.values())
        assert passes > 5, stats
        assert calls > 20, stats
        assert crashed > 0, stats
        seen = _rows(world, "SELECT status, count(*) FROM jobs GROUP BY status")
        assert {s for s, _ in seen} >= {"succeeded", "failed", "canceled"}, (seen, stats)
    finally:
        drop_database(DATABASE)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _check_books(world: World) -> list[str]:
    problems: list[str] = []
    client = redis.Redis.from_url(world.redis_url)
    crashed = {_text(m) for m in client.smembers(CRASHED)}

    # Batch counts equal the rows.
    for row in _rows(
        world,
        """
        SELECT b.id, b.status, b.request_total, b.processing, b.succeeded, b.errored, b.canceled, b.expired,
               count(j.id),
               count(j.id) FILTER (WHERE j.status IN ('queued','retrying','running')),
               count(j.id) FILTER (WHERE j.status = 'succeeded'),
               count(j.id) FILTER (WHERE j.status = 'failed'),
               count(j.id) FILTER (WHERE j.status = 'canceled'),
               count(j.id) FILTER (WHERE j.status = 'expired')
        FROM batches b LEFT JOIN jobs j ON j.batch_id = b.id GROUP BY b.id ORDER BY b.id""",
    ):
        counters, actual = tuple(row[2:8]), tuple(row[8:14])
        if counters != actual:
            problems.append(f"batch {row[0]} ({row[1]}): counters (total, processing, succeeded, errored, canceled, "
                            f"expired) = {counters}, rows = {actual}")  # fmt: skip
        if (row[1] == "ended") != (row[3] == 0):
            problems.append(f"batch {row[0]} is {row[1]} with processing = {row[3]}")
        if row[1] != "ended":
            problems.append(f"batch {row[0]} is still {row[1]} after the drain")

    # Jobs: final, not running without a lease, every claim an attempt row, every attempt closed.
    for row in _rows(world, "SELECT id, status FROM jobs WHERE status = 'running' AND "
                     "(lease_owner IS NULL OR lease_expires_at IS NULL)"):  # fmt: skip
        problems.append(f"job {row[0]} is running with no lease")
    for row in _rows(
        world,
        """
        SELECT j.id, j.status, j.attempt_count, count(a.id) FROM jobs j LEFT JOIN job_attempts a ON a.job_id = j.id
        GROUP BY j.id HAVING j.attempt_count <> count(a.id)""",
    ):
        problems.append(f"job {row[0]} ({row[1]}): attempt_count {row[2]} but {row[3]} attempt rows")
    for row in _rows(
        world,
        """
        SELECT a.job_id, a.number, j.status FROM job_attempts a JOIN jobs j ON j.id = a.job_id
        WHERE a.ended_at IS NULL AND j.status IN ('succeeded','failed','canceled','expired')""",
    ):
        if f"{row[0]}:{row[1]}" not in crashed:
            problems.append(f"job {row[0]} is {row[2]} but attempt {row[1]} was never closed")

    # One ledger row per attempt that reported usage, with its tokens; none for the others.
    for row in _rows(
        world,
        """
        SELECT a.job_id, a.number, a.input_tokens, a.output_tokens, count(u.id), coalesce(sum(u.input_tokens), 0),
               coalesce(sum(u.output_tokens), 0)
        FROM job_attempts a LEFT JOIN usage_ledger u ON u.job_id = a.job_id AND u.attempt = a.number
        GROUP BY a.id""",
    ):
        used = row[2] + row[3] > 0
        if (used and (row[4] != 1 or (row[5], row[6]) != (row[2], row[3]))) or (not used and row[4] != 0):
            problems.append(f"attempt {row[0]}#{row[1]} reported {(row[2], row[3])} tokens; ledger has {row[4]} "
                            f"rows with {(row[5], row[6])}")  # fmt: skip
    # Every call the upstream billed is in the ledger exactly once (billed, never zero, never twice).
    billed = {_text(m) for m in client.smembers(BILLED)}
    ledger = _rows(world, "SELECT upstream_request_id, count(*) FROM usage_ledger GROUP BY upstream_request_id")
    in_ledger = sum(int(n) for _, n in ledger)
    twice = [rid for rid, n in ledger if rid is not None and n > 1]
    unknown = [rid for rid, _ in ledger if rid is not None and rid not in billed]
    if in_ledger != len(billed) or twice or unknown:
        recorded = {rid for rid, _ in ledger if rid is not None}
        problems.append(f"the upstream billed {len(billed)} calls, the ledger holds {in_ledger} rows "
                        f"({len(billed - recorded)} billed calls have no row with their id; ids twice: {twice[:5]}; "
                        f"ids never billed: {unknown[:5]})")  # fmt: skip

    # Job and batch totals equal their ledger rows.
    for row in _rows(
        world,
        """
        SELECT j.id, j.input_tokens, j.output_tokens, j.cost_usd, coalesce(sum(u.input_tokens), 0),
               coalesce(sum(u.output_tokens), 0), coalesce(sum(u.cost_usd), 0)
        FROM jobs j LEFT JOIN usage_ledger u ON u.job_id = j.id GROUP BY j.id
        HAVING (j.input_tokens, j.output_tokens, j.cost_usd)
               <> (coalesce(sum(u.input_tokens), 0), coalesce(sum(u.output_tokens), 0), coalesce(sum(u.cost_usd), 0))
        LIMIT 10""",
    ):
        problems.append(f"job {row[0]} totals {tuple(row[1:4])} but its ledger rows sum to {tuple(row[4:7])}")
    for row in _rows(
        world,
        """
        SELECT b.id, b.input_tokens, b.output_tokens, b.cost_usd, coalesce(sum(u.input_tokens), 0),
               coalesce(sum(u.output_tokens), 0), coalesce(sum(u.cost_usd), 0)
        FROM batches b LEFT JOIN usage_ledger u ON u.batch_id = b.id GROUP BY b.id
        HAVING (b.input_tokens, b.output_tokens, b.cost_usd)
               <> (coalesce(sum(u.input_tokens), 0), coalesce(sum(u.output_tokens), 0), coalesce(sum(u.cost_usd), 0))
        LIMIT 10""",
    ):
        problems.append(f"batch {row[0]} totals {tuple(row[1:4])} but its ledger rows sum to {tuple(row[4:7])}")

    # Budgets: spent equals the ledger, nothing held once every job is final.
    for row in _rows(
        world,
        """
        SELECT b.id, b.api_key_id, b.spent_usd, b.reserved_usd,
               (SELECT coalesce(sum(u.cost_usd), 0) FROM usage_ledger u WHERE u.tenant_id = b.tenant_id
                AND (b.api_key_id IS NULL OR u.api_key_id = b.api_key_id)),
               (SELECT count(*) FROM budget_reservations r WHERE r.budget_id = b.id)
        FROM budgets b ORDER BY b.id""",
    ):
        if row[2] != row[4]:
            problems.append(f"budget {row[0]} spent {row[2]} but the ledger says {row[4]}")
        if row[3] != 0 or row[5] != 0:
            problems.append(f"budget {row[0]} still holds {row[3]} in {row[5]} reservations with every job final")

    # No limiter permit held for a call that is not running (a vanished worker's is held until its hold ends).
    now = float(client.time()[0])
    for name, tenant_id in world.tenant_ids.items():
        held = client.zrangebyscore(INFLIGHT % tenant_id, now, "+inf")
        leaked = sorted(_text(m) for m in held if _text(m) not in crashed)
        if leaked:
            problems.append(f"tenant {name}: {len(leaked)} concurrency permits held with no job running: {leaked[:5]}")
    return problems
