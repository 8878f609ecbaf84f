"""What happens when jobs reach a final state, in the same transaction as the transition that put them there:
their batch's counts move (and the batch ends when nothing is left processing), their budget reservations are
released, and their webhook events are written."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, update
from sqlalchemy.orm import Session

from service.models import COUNT_FOR_STATUS, Batch, BatchStatus, Job
from service.usage import budgets

# What every terminal UPDATE returns, for on_terminal.
LANDED = (Job.id, Job.batch_id, Job.status)


def on_terminal(session: Session, landed: Sequence[Row[Any]] | Sequence[tuple[Any, ...]], *, now: datetime) -> None:
    """`landed` holds (job id, batch id, new status) for jobs that just became final."""
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
        session.execute(
            update(Batch)
            .where(Batch.id.in_(batch_ids), Batch.processing <= 0, Batch.status != BatchStatus.ENDED)
            .values(status=BatchStatus.ENDED, ended_at=now)
        )
    budgets.release(session, job_ids=[row[0] for row in landed])
