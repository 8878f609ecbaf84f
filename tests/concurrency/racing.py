"""Helpers for racing tests: parties are REAL processes (spawned, each with its own engine and connections) that
start together at a barrier and commit for real; and rows seeded in bulk with INSERT ... SELECT generate_series."""

from __future__ import annotations

import logging
import multiprocessing as mp
import traceback
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.db import make_engine, make_session_factory, new_id
from service.models import Batch, BatchStatus
from service.tenants import service as tenants
from tests.db import redis_url

# This package's Redis database on the test server (the broker and the limiter of its schedulers).
REDIS_URL = redis_url(11)
# The hard limit of a racing round: a party stuck on a lock it will never get fails the test instead of hanging.
ROUND_TIMEOUT = 300.0
REQUEST = '{"max_tokens": 50, "messages": [{"role": "user", "content": "x"}]}'


def settings_for(url: str, **overrides: Any) -> Settings:
    return Settings(database_url=url, redis_url=REDIS_URL, minimax_api_key=None, **overrides)


def factory_for(url: str) -> sessionmaker[Session]:
    return make_session_factory(make_engine(url, pool_size=2, max_overflow=2))


def _party(name: str, fn: Callable[..., Any], barrier: Any, out: Any, args: tuple[Any, ...]) -> None:
    try:
        out.put((name, "ok", fn(barrier, *args)))
    except BaseException:
        out.put((name, "error", traceback.format_exc()))


def race(*parties: Callable[..., Any], args: tuple[Any, ...] = ()) -> list[Any]:
    """Run each party `fn(barrier, *args)` in its own process; they meet at `barrier` (a Barrier of len(parties))
    and return something picklable. Returns their results in order; an exception in any party fails the test
    with that party's traceback."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(parties))
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_party, args=(str(i), fn, barrier, out, args), daemon=True) for i, fn in enumerate(parties)
    ]
    for p in procs:
        p.start()
    results: dict[str, tuple[str, Any]] = {}
    try:
        for _ in procs:
            name, status, value = out.get(timeout=ROUND_TIMEOUT)
            results[name] = (status, value)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    errors = [f"party {n} ({parties[int(n)].__name__}):\n{v}" for n, (s, v) in sorted(results.items()) if s != "ok"]
    assert not errors, "\n".join(errors)
    return [results[str(i)][1] for i in range(len(parties))]


def make_key(factory: sessionmaker[Session], tenant: str) -> tuple[str, str, str]:
    """(tenant id, key id, secret) of a new key."""
    with factory() as session:
        new = tenants.create_key(session, tenant_name=tenant)
        session.commit()
        return new.key.tenant_id, new.key.id, new.secret


def seed_batch(
    factory: sessionmaker[Session],
    *,
    tenant_id: str,
    api_key_id: str,
    n: int,
    now: datetime,
    expires_at: datetime,
    hold: Decimal | None = None,
    budget_id: str | None = None,
) -> tuple[str, list[str]]:
    """An in-progress batch of `n` queued requests, written in one INSERT ... SELECT; with `hold`, each request
    also holds that much on budget `budget_id` (as dispatch would have reserved it). Returns (batch id, job ids)."""
    batch_id = new_id("batch")
    prefix = new_id("job")
    with factory() as session:
        session.add(
            Batch(
                id=batch_id, tenant_id=tenant_id, api_key_id=api_key_id, api="native", status=BatchStatus.IN_PROGRESS,
                meta={}, request_total=n, processing=n, succeeded=0, errored=0, canceled=0, expired=0,
                created_at=now, updated_at=now, expires_at=expires_at,
            )
        )  # fmt: skip
        session.flush()
        session.execute(
            text(
                """INSERT INTO jobs (id, tenant_id, api_key_id, batch_id, custom_id, model, format, status, priority,
                metadata, params, estimated_input_tokens, max_tokens, max_attempts, attempt_count, next_attempt_at,
                output_tokens_so_far, created_at, updated_at, expires_at, input_tokens, output_tokens,
                cache_read_tokens, cache_write_tokens, cost_usd, budget_reserved)
                SELECT :prefix || '_' || lpad(g::text, 8, '0'), :tenant, :key, :batch, 'r' || g, 'MiniMax-M2.7',
                'anthropic', 'queued', 0, '{}'::jsonb, CAST(:params AS jsonb), 10, 50, 3, 0, :now, 0, :now, :now,
                :expires, 0, 0, 0, 0, 0, :reserved
                FROM generate_series(1, :n) AS g"""
            ),
            {"prefix": prefix, "tenant": tenant_id, "key": api_key_id, "batch": batch_id, "params": REQUEST,
             "now": now, "expires": expires_at, "n": n, "reserved": hold is not None},
        )  # fmt: skip
        if hold is not None:
            session.execute(
                text(
                    """INSERT INTO budget_reservations (job_id, budget_id, amount_usd)
                    SELECT id, :budget, :amount FROM jobs WHERE batch_id = :batch"""
                ),
                {"budget": budget_id, "amount": hold, "batch": batch_id},
            )
            session.execute(
                text("UPDATE budgets SET reserved_usd = reserved_usd + :total WHERE id = :budget"),
                {"total": hold * n, "budget": budget_id},
            )
        ids = list(session.scalars(text("SELECT id FROM jobs WHERE batch_id = :b ORDER BY id"), {"b": batch_id}))
        session.commit()
    return batch_id, ids


class ConflictCounter(logging.Handler):
    """Counts the deadlocks and serialization failures the service retried (it logs each at WARNING on
    `mmjobs.db` or `mmjobs.api`): a racing test that follows the lock order expects none to have happened."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "again" in record.getMessage():  # "running it again" / "running the request again"
            self.count += 1

    def install(self) -> ConflictCounter:
        for name in ("mmjobs.db", "mmjobs.api"):
            logging.getLogger(name).addHandler(self)
            logging.getLogger(name).setLevel(logging.WARNING)
        return self
