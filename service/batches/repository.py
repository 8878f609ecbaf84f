"""Batch queries. Requests are written with COPY on Postgres: 100,000 rows in one transaction in seconds."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, cast

from psycopg.copy import QueuedLibpqWriter
from sqlalchemy import Table, delete, insert, select, update
from sqlalchemy.orm import Session, undefer

from service.batches import tally
from service.jobs.transitions import start_batch_cancel
from service.models import Batch, BatchTally, Job

# Every NOT NULL column of `jobs`, in COPY order: COPY bypasses the ORM's defaults.
JOB_COLUMNS = (
    "id", "tenant_id", "api_key_id", "batch_id", "custom_id", "model", "format", "status", "priority", "metadata",
    "params", "estimated_input_tokens", "max_tokens", "max_attempts", "attempt_count", "next_attempt_at",
    "output_tokens_so_far", "created_at", "updated_at", "expires_at", "input_tokens", "output_tokens",
    "cache_read_tokens", "cache_write_tokens", "cost_usd", "budget_reserved", "webhook_url",
)  # fmt: skip
_JSON_COLUMNS = {"metadata", "params"}
# Their Postgres types, told to COPY up front so psycopg does not look up a dumper for every value.
_COPY_TYPES = {
    **{c: "int4" for c in JOB_COLUMNS if c.endswith(("_tokens", "_attempts", "_count", "_so_far")) or c == "priority"},
    **{c: "timestamptz" for c in JOB_COLUMNS if c.endswith("_at")},
    **{c: "jsonb" for c in _JSON_COLUMNS},
    "cost_usd": "numeric",
    "budget_reserved": "bool",
}
COPY_TYPES = [_COPY_TYPES.get(c, "varchar") for c in JOB_COLUMNS]
SQLITE_CHUNK = 2000


def add(session: Session, batch: Batch) -> None:
    session.add(batch)
    session.flush()


@contextlib.contextmanager
def job_writer(session: Session) -> Iterator[Callable[[dict[str, Any]], None]]:
    """Yields `write(row)` for job rows (dicts keyed by JOB_COLUMNS), all inserted in the session's transaction.

    On Postgres, one COPY for the whole batch, its data sent by psycopg's queued writer from a second thread:
    Postgres ingests while this thread parses and validates the next lines, and memory stays bounded by the
    writer's queue. An exception inside the block aborts the COPY (the caller's transaction then rolls back).
    Elsewhere (SQLite), executemany in chunks."""
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        chunk: list[dict[str, Any]] = []
        table = cast(Table, Job.__table__)

        def add(row: dict[str, Any]) -> None:
            chunk.append({k: row[k] for k in JOB_COLUMNS})
            if len(chunk) >= SQLITE_CHUNK:
                session.execute(insert(table), chunk)
                chunk.clear()

        yield add
        if chunk:
            session.execute(insert(table), chunk)
        return
    raw = connection.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cursor:
        statement = f"COPY jobs ({', '.join(JOB_COLUMNS)}) FROM STDIN"
        try:
            with cursor.copy(statement, writer=QueuedLibpqWriter(cursor)) as copy:
                copy.set_types(COPY_TYPES)

                def write(row: dict[str, Any]) -> None:
                    copy.write_row([row[c] for c in JOB_COLUMNS])

                try:
                    yield write
                except BaseException as exc:
                    raise _Rejected from exc
        except _Rejected as rejected:
            raise cast(BaseException, rejected.__cause__) from None


class _Rejected(Exception):
    """Aborts the COPY of a batch whose validation failed. psycopg sends the exception's text to Postgres as the
    COPY FAIL message: the real error can quote megabytes of the bad line, which makes Postgres drop the
    connection, so this short one goes instead and the real error is raised again outside."""

    def __str__(self) -> str:
        return "batch rejected"


def set_total(session: Session, *, batch_id: str, total: int) -> None:
    session.execute(update(Batch).where(Batch.id == batch_id).values(request_total=total, processing=total))


def get(session: Session, *, tenant_id: str, batch_id: str, api: str | None = None) -> Batch | None:
    query = select(Batch).where(Batch.id == batch_id, Batch.tenant_id == tenant_id)
    if api is not None:
        query = query.where(Batch.api == api)
    batch = session.scalars(query).one_or_none()
    if batch is not None:
        tally.current(session, [batch])
    return batch


def list_page(
    session: Session,
    *,
    tenant_id: str,
    api: str,
    limit: int,
    before_id: str | None = None,
    after_id: str | None = None,
) -> tuple[list[Batch], bool]:
    """A page of batches, newest first, and whether more lie beyond it.

    As Anthropic pages: `after_id` gives the page after that batch in this order (older ones), `before_id` the
    page before it (newer ones, the closest first in the fetch, then shown newest first).
    """
    query = select(Batch).where(Batch.tenant_id == tenant_id, Batch.api == api)
    if before_id is not None:
        rows = list(session.scalars(query.where(Batch.id > before_id).order_by(Batch.id.asc()).limit(limit + 1)))
        page = rows[:limit]
        page.reverse()
        tally.current(session, page)
        return page, len(rows) > limit
    if after_id is not None:
        query = query.where(Batch.id < after_id)
    rows = list(session.scalars(query.order_by(Batch.id.desc()).limit(limit + 1)))
    tally.current(session, rows[:limit])
    return rows[:limit], len(rows) > limit


def start_cancel(session: Session, *, batch_id: str, now: datetime) -> int:
    """Mark the batch canceling and cancel a first chunk of its waiting requests; the scheduler cancels the rest
    and running ones finish (lock order and chunking: transitions.start_batch_cancel). The batch's tallies are
    folded at once (its row is locked already), so a batch with nothing left running ends in this answer."""
    canceled = start_batch_cancel(session, batch_id=batch_id, now=now)
    tally.fold(session, now=now, batch_ids=[batch_id])
    return canceled


def delete_batch(session: Session, *, batch_id: str) -> None:
    session.execute(delete(Job).where(Job.batch_id == batch_id))
    session.execute(delete(Batch).where(Batch.id == batch_id))
    session.execute(delete(BatchTally).where(BatchTally.batch_id == batch_id))


def results_page(
    session: Session, *, batch_id: str, after: str | None, statuses: Sequence[str], limit: int
) -> list[Job]:
    """One page of a batch's finished requests in id order, with results loaded."""
    query = (
        select(Job)
        .options(undefer(Job.result))
        .where(Job.batch_id == batch_id, Job.status.in_(statuses))
        .order_by(Job.id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(Job.id > after)
    return list(session.scalars(query))
