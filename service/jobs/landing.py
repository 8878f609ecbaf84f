"""What happens when jobs reach a final state, in the same transaction as the transition that put them there:
their batch gets a tally of its moved counts (the scheduler folds it into the batch row, and ends the batch when
nothing is left processing: service/batches/tally.py), their budget reservations are released, and their webhook
events are written (job.* for single jobs; batch.ended for batches, at the fold: a 100,000-request batch sends one
event, not 100,000).

Lock order (service/db.py): the caller has locked the jobs; this takes their budgets in id order. It does not
lock their batches (a tally is only inserted). Job ids go to Postgres as one array parameter, however many landed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, select
from sqlalchemy.orm import Session

from service.batches import tally
from service.db import id_in
from service.models import COUNT_FOR_STATUS, Job
from service.usage import budgets
from service.webhooks import outbox

# What every terminal UPDATE returns, for on_terminal.
LANDED = (Job.id, Job.batch_id, Job.status)


def on_terminal(
    session: Session,
    landed: Sequence[Row[Any]] | Sequence[tuple[Any, ...]],
    *,
    now: datetime,
    usage: Mapping[str, Mapping[str, Any]] | None = None,
    reserved: bool = True,
) -> None:
    """`landed` holds (job id, batch id, new status) of jobs a transition just moved; only final states count (a
    failed attempt that will be retried moves its job to `retrying`, which is not an ending). `usage` maps a batch
    id to the usage the same transaction billed it (service/usage/ledger.py), written in the same tally.
    `reserved=False`: none of the jobs holds a budget reservation (Job.budget_reserved), so none is released."""
    moves: dict[str, Counter[str]] = {}
    for batch_id, more in (usage or {}).items():
        moves.setdefault(batch_id, Counter()).update(more)
    landed = [row for row in landed if row[2] in COUNT_FOR_STATUS]
    for row in landed:
        if row[1] is not None:
            moves.setdefault(row[1], Counter())[COUNT_FOR_STATUS[row[2]]] += 1
    # The batch rows are not touched: the scheduler folds the tallies into them (service/batches/tally.py).
    tally.add(session, ({"batch_id": b, **m} for b, m in sorted(moves.items())))
    if not landed:
        return
    if reserved:
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
