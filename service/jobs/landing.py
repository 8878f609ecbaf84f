"""What happens when jobs reach a final state, in the same transaction as the transition that put them there:
their batch's counts move (and the batch ends when nothing is left processing), their budget reservations are
released, and their webhook events are written (job.* for single jobs, batch.ended for batches: a 100,000-request
batch sends one event, not 100,000).

Lock order (service/db.py): the caller has locked the jobs; this takes their batches in id order, then their
budgets in id order. Job ids go to Postgres as one array parameter, however many landed."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, select, update
from sqlalchemy.orm import Session

from service.batches import progress as batch_progress
from service.batches.progress import batch_event
from service.db import id_in
from service.models import COUNT_FOR_STATUS, Batch, BatchStatus, Job
from service.usage import budgets
from service.webhooks import outbox

# What every terminal UPDATE returns, for on_terminal.
LANDED = (Job.id, Job.batch_id, Job.status)


def on_terminal(session: Session, landed: Sequence[Row[Any]] | Sequence[tuple[Any, ...]], *, now: datetime) -> None:
    """`landed` holds (job id, batch id, new status) of jobs a transition just moved; only final states count (a
    failed attempt that will be retried moves its job to `retrying`, which is not an ending)."""
    landed = [row for row in landed if row[2] in COUNT_FOR_STATUS]
    if not landed:
        return
    moves: Counter[tuple[str, str]] = Counter()
    for row in landed:
        batch_id, status = row[1], row[2]
        if batch_id is not None and status in COUNT_FOR_STATUS:
            moves[(batch_id, COUNT_FOR_STATUS[status])] += 1
    for (batch_id, column), n in sorted(moves.items()):
        session.execute(
            update(Batch)
            .where(Batch.id == batch_id)
            .values({Batch.processing: Batch.processing - n, getattr(Batch, column): getattr(Batch, column) + n})
        )
    batch_ids = sorted({b for b, _ in moves})
    if batch_ids:
        ended = session.scalars(
            update(Batch)
            .where(Batch.id.in_(batch_ids), Batch.processing <= 0, Batch.status != BatchStatus.ENDED)
            .values(status=BatchStatus.ENDED, ended_at=now)
            .returning(Batch)
        ).all()
        for batch in ended:
            outbox.emit(
                session, tenant_id=batch.tenant_id, type="batch.ended", data=batch_event(batch),
                webhook_url=batch.webhook_url,
            )  # fmt: skip
        batch_progress.on_counts_moved(session, batch_ids=batch_ids, now=now)
    budgets.release(session, job_ids=[row[0] for row in landed])
    single = [row[0] for row in landed if row[1] is None]
    if single:
        for job in session.scalars(select(Job).where(id_in(session, Job.id, single))):
            outbox.emit(
                session, tenant_id=job.tenant_id, type=f"job.{job.status}", data=job_event(job),
                webhook_url=job.webhook_url,
            )  # fmt: skip


def job_event(job: Job) -> dict[str, Any]:
    """The job as an event carries it: no params, no result body (the receiver GETs the job for those)."""
    return {
        "id": job.id,
        "object": "job",
        "status": job.status,
        "model": job.model,
        "format": job.format,
        "metadata": job.meta,
        "created_at": job.created_at,
        "finished_at": job.finished_at,
        "attempt_count": job.attempt_count,
        "usage": {
            "input_tokens": job.input_tokens,
            "output_tokens": job.output_tokens,
            "cache_read_tokens": job.cache_read_tokens,
            "cache_write_tokens": job.cache_write_tokens,
            "cost_usd": str(job.cost_usd),
        },
        "error": job.error,
    }
