"""The aggregate queries behind `/metrics`. Read-only; each is one GROUP BY.

The gauges read only non-terminal jobs, through the partial indexes the scheduler uses (`ix_jobs_waiting`,
`ix_jobs_running_lease`). The totals (finished jobs, attempts, tokens, cost, webhooks) scan their tables: the API
caches them for `MMJOBS_METRICS_CACHE_SECONDS`, and a scrape every 15-60 s costs one scan per table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from service.models import TERMINAL, WAITING, Job, JobAttempt, JobStatus, UsageEntry, WebhookAttempt, WebhookDelivery


@dataclass(frozen=True, kw_only=True, slots=True)
class WaitingGroup:
    status: str
    model: str
    count: int
    due: int
    oldest_due_at: datetime | None


@dataclass(frozen=True, kw_only=True, slots=True)
class UsageTotals:
    model: str
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: Decimal


def waiting(session: Session, *, now: datetime) -> list[WaitingGroup]:
    """Queued and retrying jobs per (status, model): all, those due now, and the earliest due time among them."""
    due = Job.next_attempt_at <= now
    rows = session.execute(
        select(
            Job.status,
            Job.model,
            func.count(),
            func.coalesce(func.sum(case((due, 1), else_=0)), 0),
            func.min(case((due, Job.next_attempt_at), else_=None)),
        )
        .where(Job.status.in_([str(s) for s in WAITING]))
        .group_by(Job.status, Job.model)
    ).all()
    return [
        WaitingGroup(status=status, model=model, count=count, due=int(due_count), oldest_due_at=oldest)
        for status, model, count, due_count, oldest in rows
    ]


def running(session: Session) -> dict[str, int]:
    rows = session.execute(
        select(Job.model, func.count()).where(Job.status == JobStatus.RUNNING).group_by(Job.model)
    ).all()
    return {model: count for model, count in rows}


def finished(session: Session) -> dict[tuple[str, str], int]:
    """Jobs in each terminal state, per (status, model)."""
    rows = session.execute(
        select(Job.status, Job.model, func.count())
        .where(Job.status.in_([str(s) for s in TERMINAL]))
        .group_by(Job.status, Job.model)
    ).all()
    return {(status, model): count for status, model, count in rows}


def attempts(session: Session) -> dict[str, int]:
    """Finished attempts per classification (an attempt in flight has none yet)."""
    rows = session.execute(
        select(JobAttempt.classification, func.count())
        .where(JobAttempt.classification.is_not(None))
        .group_by(JobAttempt.classification)
    ).all()
    return {str(classification): count for classification, count in rows}


def usage(session: Session) -> list[UsageTotals]:
    rows = session.execute(
        select(
            UsageEntry.model,
            func.sum(UsageEntry.input_tokens),
            func.sum(UsageEntry.output_tokens),
            func.sum(UsageEntry.cache_read_tokens),
            func.sum(UsageEntry.cache_write_tokens),
            func.sum(UsageEntry.cost_usd),
        ).group_by(UsageEntry.model)
    ).all()
    return [
        UsageTotals(
            model=model,
            input_tokens=int(i or 0),
            output_tokens=int(o or 0),
            cache_read_tokens=int(cr or 0),
            cache_write_tokens=int(cw or 0),
            cost_usd=Decimal(cost or 0),
        )
        for model, i, o, cr, cw, cost in rows
    ]


def webhook_deliveries(session: Session) -> dict[str, int]:
    """Deliveries per status: pending, delivered, failed."""
    rows = session.execute(select(WebhookDelivery.status, func.count()).group_by(WebhookDelivery.status)).all()
    return {str(status): count for status, count in rows}


def webhook_attempts(session: Session) -> dict[str, int]:
    """HTTP attempts per outcome: success (2xx), http_error (any other status), transport_error (no answer)."""
    outcome = case(
        (WebhookAttempt.http_status.is_(None), "transport_error"),
        (WebhookAttempt.http_status.between(200, 299), "success"),
        else_="http_error",
    )
    rows = session.execute(select(outcome, func.count()).group_by(outcome)).all()
    return {str(name): count for name, count in rows}
