"""Engine, sessions and the column types shared by every table, and the one lock order every transaction follows.

LOCK ORDER (issue 13). A transaction that locks rows of several kinds takes them in this order, and rows of one kind
in ascending id:

    jobs (by id) -> job_attempts -> batches (by id) -> budgets (by id) -> webhook endpoints -> webhook deliveries

Budget reservations belong to their job (locked with or after it); ledger rows are only inserted. A statement
that updates many rows either locks them first in id order (`SELECT ... ORDER BY id FOR UPDATE [SKIP LOCKED]`,
then the UPDATE) or skips locked rows, so two transactions never wait on each other in a circle. Every place that
takes locks says so with a comment naming this order ("lock order: service/db.py"). A deadlock or serialization
failure that still happens (a lock Postgres takes on its own, a foreign-key check) is retried by running the whole
unit of work again: `run_in_transaction` for workers and the scheduler, `RetryConflicts` for API requests.
"""

from __future__ import annotations

import base64
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    ColumnElement,
    DateTime,
    Dialect,
    Engine,
    Integer,
    String,
    any_,
    bindparam,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from service.config import Settings

# JSONB on Postgres (indexable, compact), plain JSON on the embedded SQLite.
JSONType = JSON().with_variant(JSONB(), "postgresql")
# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the offset on its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def db_now(session: Session) -> datetime:
    """The database server's clock (`statement_timestamp()`: now, not when a long transaction began): the one
    clock every process compares deadlines and leases with, whatever its own says (issue 13 point 6). SQLite
    (embedded, one machine) has no server: the local clock is the same clock there."""
    if session.get_bind().dialect.name != "postgresql":
        return utcnow()
    value = session.scalar(select(func.statement_timestamp()))
    assert isinstance(value, datetime)
    return value.astimezone(UTC)


def id_in(session: Session, column: Any, ids: Sequence[str]) -> ColumnElement[bool]:
    """`column` is one of `ids`, sent as ONE array parameter on Postgres (`= ANY(:ids)`): an IN list takes a
    parameter per id and Postgres refuses a statement with more than 65,535 (issue 13 point 1)."""
    if session.get_bind().dialect.name == "postgresql":
        match: ColumnElement[bool] = column == any_(bindparam(None, list(ids), type_=ARRAY(String), unique=True))
        return match
    listed: ColumnElement[bool] = column.in_(list(ids))
    return listed


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_TO_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _CROCKFORD.lower().encode())


_id_lock = threading.Lock()
_last_id = 0


_entropy = b""


def _random80() -> int:
    """80 bits from the OS's cryptographic source, read 4 KB at a time: one syscall per ~400 ids, not one per id
    (which cost a 100,000-request batch over a second). Called under _id_lock."""
    global _entropy
    if len(_entropy) < 10:
        _entropy = os.urandom(4096)
    chunk, _entropy = _entropy[:10], _entropy[10:]
    return int.from_bytes(chunk, "big")


def new_id(prefix: str) -> str:
    """A sortable unique id: `prefix_` + 26 Crockford base32 chars (48-bit ms time + 80 random bits).

    Ids sort by creation time, so cursor pagination can walk them directly; within one millisecond a process
    counts up from the previous id (monotonic ULID), so its ids keep their creation order too.
    """
    global _last_id
    with _id_lock:
        value = (int(time.time() * 1000) << 80) | _random80()
        if value <= _last_id:
            value = _last_id + 1
        _last_id = value
    # The 130-bit big-endian base32 of `value` is the first 26 of the 32 characters that RFC 4648 base32 makes
    # of `value << 30` in 20 bytes; then the alphabet is swapped for Crockford's (in C, not a Python loop).
    encoded = base64.b32encode((value << 30).to_bytes(20, "big"))[:26]
    return f"{prefix}_{encoded.translate(_TO_CROCKFORD).decode()}"


# A pooled connection idle longer than this is pinged before use; one handed straight back out is not.
PING_IDLE_SECONDS = 1.0


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine whose pool pings a connection before handing it out only if it sat idle more than
    PING_IDLE_SECONDS: a database restart is still met with a fresh connection instead of an error, but a busy
    worker no longer pays a round trip before every transaction (pool_pre_ping was 11 % of its samples, issue
    17.1). A connection that breaks mid-use raises an OperationalError the callers retry (execution.persist,
    run_in_transaction), and SQLAlchemy then drops every connection of the pool made before it."""
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    engine = create_engine(url, **kwargs)
    if not kwargs.get("pool_pre_ping"):
        event.listen(engine, "checkin", _stamp_checkin)
        event.listen(engine, "checkout", _ping_if_idle)
    return engine


def _stamp_checkin(dbapi_connection: Any, record: Any) -> None:
    record.info["checked_in_at"] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """The pool's checkout hook: raising DisconnectionError makes the pool discard this connection and retry the
    checkout with a new one (SQLAlchemy's documented pessimistic-disconnect recipe)."""
    idle_since = record.info.get("checked_in_at")
    if idle_since is None or time.monotonic() - idle_since <= PING_IDLE_SECONDS:
        return
    try:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT 1")
        finally:
            cursor.close()
        if not getattr(dbapi_connection, "autocommit", True):
            dbapi_connection.rollback()
    except Exception as exc:
        raise DisconnectionError(f"the pooled connection is dead ({type(exc).__name__})") from exc


def engine_for(settings: Settings) -> Engine:
    return make_engine(settings.database_url, pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on error. The only place sessions commit."""
    with factory() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


# For the worker's ORM UPDATEs, whose sessions hold no loaded objects: the ORM's default matches every returned row
# against the session's identity map (2,500 rows per lease renewal at 10,000 calls in flight), for nothing.
UNSYNCED = {"synchronize_session": False}


@contextmanager
def one_statement(factory: sessionmaker[Session]) -> Iterator[Session]:
    """For work that is one SQL statement, atomic by itself (the worker's claim, issue 17.1): the session's
    connection runs in autocommit, so the statement commits as it ends, without a BEGIN and a COMMIT round trip
    around it. Never for two statements that must land together: each would commit on its own. The connection's
    isolation level is put back (client-side, no round trip) when it returns to the pool. A factory bound to a
    connection the caller holds (a test's outer transaction) runs the work in that transaction instead."""
    if not isinstance(factory.kw.get("bind"), Engine):
        with transaction(factory) as session:
            yield session
        return
    with factory() as session:
        session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        yield session


log = logging.getLogger("mmjobs.db")
T = TypeVar("T")
# SQLSTATEs that mean "nothing is wrong with this work; run it again": deadlock_detected, serialization_failure.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})
CONFLICT_ATTEMPTS = 5


def is_conflict(exc: BaseException) -> bool:
    """A deadlock or serialization failure: Postgres rolled the transaction back, and running it again is safe."""
    if not isinstance(exc, DBAPIError):
        return False
    return getattr(exc.orig, "sqlstate", None) in RETRYABLE_SQLSTATES


def conflict_backoff(attempt: int) -> float:
    """Seconds to wait before the attempt-th retry: short, jittered, so the two parties do not collide again."""
    return float(random.uniform(0, 0.02 * 2**attempt))


def run_in_transaction(
    factory: sessionmaker[Session], work: Callable[[Session], T], *, attempts: int = CONFLICT_ATTEMPTS
) -> T:
    """Run `work` in one transaction and commit; on a deadlock or serialization failure run ALL of it again in a
    fresh transaction (never a single statement: the failed transaction is gone as a whole). `work` must do
    nothing outside the database that cannot be repeated."""
    for attempt in range(attempts):
        try:
            with transaction(factory) as session:
                return work(session)
        except DBAPIError as exc:
            if not is_conflict(exc) or attempt == attempts - 1:
                raise
            log.warning("transaction hit %s; running it again (%d of %d)", exc.orig.__class__.__name__,
                        attempt + 2, attempts)  # fmt: skip
            time.sleep(conflict_backoff(attempt))
    raise AssertionError("unreachable")
