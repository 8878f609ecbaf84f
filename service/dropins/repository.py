"""Queries the drop-ins need beyond the batch service's: per-batch usage and model for a page in one query."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.models import Job


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchTotals:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    model: str | None = None  # the batch's model when all its requests name the same one


def totals(session: Session, *, batch_ids: Sequence[str]) -> dict[str, BatchTotals]:
    if not batch_ids:
        return {}
    rows = session.execute(
        select(
            Job.batch_id,
            func.coalesce(func.sum(Job.input_tokens), 0),
            func.coalesce(func.sum(Job.output_tokens), 0),
            func.coalesce(func.sum(Job.cache_read_tokens), 0),
            func.coalesce(func.sum(Job.cache_write_tokens), 0),
            func.min(Job.model),
            func.max(Job.model),
        )
        .where(Job.batch_id.in_(batch_ids))
        .group_by(Job.batch_id)
    ).all()
    return {
        str(r[0]): BatchTotals(
            input_tokens=int(r[1]),
            output_tokens=int(r[2]),
            cache_read_tokens=int(r[3]),
            cache_write_tokens=int(r[4]),
            model=r[5] if r[5] == r[6] else None,
        )
        for r in rows
    }
