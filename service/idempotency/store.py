"""Idempotency keys in the database, each step one short transaction of its own (they must commit before and
after the request's own transaction, which they never share).

A row inserted before the request runs marks the key in flight; the primary key (tenant_id, key) lets only
one request insert it, and the others wait for that insert to commit, then find it. The owner renews
`locked_until` while its request runs, so a row left by a crashed API process can be taken over after it lapses.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, delete, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session, sessionmaker

from service.db import transaction
from service.models import IdempotencyKey
from service.tenants import service as tenants

TTL = timedelta(hours=24)


@dataclass(frozen=True, kw_only=True, slots=True)
class Claim:
    """This request holds the key: it runs, then completes or releases the claim."""

    tenant_id: str
    key: str
    owner: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Stored:
    """Another request holds the key: still in flight (status_code None), or finished with this response."""

    fingerprint: str | None
    status_code: int | None
    headers: list[list[str]]
    body: bytes
    replayable: bool = True  # False: the response showed a secret and was not kept


def _mine(claim: Claim) -> tuple[ColumnElement[bool], ...]:
    return (
        IdempotencyKey.tenant_id == claim.tenant_id,
        IdempotencyKey.key == claim.key,
        IdempotencyKey.owner == claim.owner,
        IdempotencyKey.status_code.is_(None),
    )


def _insert(session: Session, values: Mapping[str, object]) -> bool:
    statement = postgresql.insert(IdempotencyKey).values(**values)
    statement = statement.on_conflict_do_nothing(index_elements=["tenant_id", "key"])
    return session.execute(statement.returning(IdempotencyKey.key)).first() is not None


def open_key(
    factory: sessionmaker[Session],
    *,
    secret: str,
    key: str,
    path: str,
    fingerprint: str | None,
    now: datetime,
    lock_seconds: float,
) -> Claim | Stored | None:
    """Authenticate `secret` and claim `key` for its tenant. None: not a valid API key (the route answers 401)."""
    owner = secrets.token_hex(16)
    locked_until = now + timedelta(seconds=lock_seconds)
    for _ in range(3):  # a row can vanish between the insert that lost and the read (released, expired)
        with transaction(factory) as session:
            api_key = tenants.authenticate(session, secret=secret)
            if api_key is None:
                return None
            tenant_id = api_key.tenant_id
            session.execute(
                delete(IdempotencyKey).where(
                    IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key, IdempotencyKey.expires_at <= now
                )
            )
            claim = Claim(tenant_id=tenant_id, key=key, owner=owner)
            values = {
                "tenant_id": tenant_id, "key": key, "path": path[:2048], "fingerprint": fingerprint, "owner": owner,
                "locked_until": locked_until, "expires_at": now + TTL, "created_at": now,
            }  # fmt: skip
            if _insert(session, values):
                return claim
            # In flight, but its owner stopped renewing it (the API process died): take it over.
            taken = session.execute(
                update(IdempotencyKey)
                .where(
                    IdempotencyKey.tenant_id == tenant_id,
                    IdempotencyKey.key == key,
                    IdempotencyKey.status_code.is_(None),
                    IdempotencyKey.locked_until < now,
                )
                .values(owner=owner, locked_until=locked_until, fingerprint=fingerprint, path=path[:2048])
                .returning(IdempotencyKey.key)
            ).first()
            if taken is not None:
                return claim
            row = session.get(IdempotencyKey, (tenant_id, key), populate_existing=True)
            if row is not None:
                return Stored(
                    fingerprint=row.fingerprint,
                    status_code=row.status_code,
                    headers=row.response_headers or [],
                    body=row.response_body or b"",
                    replayable=row.replayable,
                )
    raise RuntimeError(f"idempotency key {key!r} kept changing under us")


def complete(
    factory: sessionmaker[Session],
    claim: Claim,
    *,
    fingerprint: str,
    status_code: int,
    headers: list[list[str]],
    body: bytes,
    now: datetime,
    replayable: bool = True,
) -> None:
    """Keep the response for replays; with `replayable=False` (it showed a secret) keep only that the request
    ran and how it ended: no header, no body."""
    with transaction(factory) as session:
        session.execute(
            update(IdempotencyKey)
            .where(*_mine(claim))
            .values(
                fingerprint=fingerprint,
                status_code=status_code,
                response_headers=headers if replayable else None,
                response_body=body if replayable else None,
                replayable=replayable,
                completed_at=now,
            )
        )


def release(factory: sessionmaker[Session], claim: Claim) -> None:
    """Forget a claim whose request failed or cannot be replayed: a retry with the key runs again."""
    with transaction(factory) as session:
        session.execute(delete(IdempotencyKey).where(*_mine(claim)))


def renew(factory: sessionmaker[Session], claim: Claim, *, until: datetime) -> None:
    with transaction(factory) as session:
        session.execute(update(IdempotencyKey).where(*_mine(claim)).values(locked_until=until))


def purge(factory: sessionmaker[Session], *, now: datetime) -> int:
    """Delete every expired key."""
    with transaction(factory) as session:
        result = session.execute(delete(IdempotencyKey).where(IdempotencyKey.expires_at <= now))
        return int(result.rowcount)  # type: ignore[attr-defined]
