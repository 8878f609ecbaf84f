"""Engine, sessions and the column types shared by every table."""

from __future__ import annotations

import base64
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Dialect, Engine, Integer, create_engine
from sqlalchemy.dialects.postgresql import JSONB
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


def make_engine(url: str, **kwargs: Any) -> Engine:
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


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
