"""Usage totals from the ledger."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.models import Budget, UsageEntry

GROUPS = ("day", "model", "api_key", "batch")


def totals(
    session: Session, *, tenant_id: str | None, start: datetime | None, end: datetime | None, group_by: str | None
) -> list[dict[str, Any]]:
    key: Any
    if group_by == "day":
        key = func.date(UsageEntry.at)
    elif group_by == "model":
        key = UsageEntry.model
    elif group_by == "api_key":
        key = UsageEntry.api_key_id
    elif group_by == "batch":
        key = UsageEntry.batch_id
    elif group_by == "account":  # the stored name: "tenant.<id>" is the tenant's own key (the router shows it)
        key = UsageEntry.account
    else:
        key = None
    columns = [
        func.count().label("attempts"),
        func.count(func.distinct(UsageEntry.job_id)).label("jobs"),
        func.coalesce(func.sum(UsageEntry.input_tokens), 0).label("input_tokens"),
        func.coalesce(func.sum(UsageEntry.output_tokens), 0).label("output_tokens"),
        func.coalesce(func.sum(UsageEntry.cache_read_tokens), 0).label("cache_read_tokens"),
        func.coalesce(func.sum(UsageEntry.cache_write_tokens), 0).label("cache_write_tokens"),
        func.coalesce(func.sum(UsageEntry.cost_usd), 0).label("cost_usd"),
        # The part of the above that is our own count (the call broke or was stopped before MiniMax's usage came).
        func.count().filter(UsageEntry.estimated).label("estimated_attempts"),
        func.coalesce(func.sum(UsageEntry.input_tokens).filter(UsageEntry.estimated), 0).label(
            "estimated_input_tokens"
        ),
        func.coalesce(func.sum(UsageEntry.output_tokens).filter(UsageEntry.estimated), 0).label(
            "estimated_output_tokens"
        ),
        func.coalesce(func.sum(UsageEntry.cost_usd).filter(UsageEntry.estimated), 0).label("estimated_cost_usd"),
    ]
    query = select(*([key.label("key")] if key is not None else []), *columns)
    if tenant_id is not None:
        query = query.where(UsageEntry.tenant_id == tenant_id)
    if start is not None:
        query = query.where(UsageEntry.at >= start)
    if end is not None:
        query = query.where(UsageEntry.at < end)
    if key is not None:
        query = query.group_by(key).order_by(key)
    return [dict(r._mapping) for r in session.execute(query)]


def budgets_of(session: Session, *, tenant_id: str) -> list[Budget]:
    return list(session.scalars(select(Budget).where(Budget.tenant_id == tenant_id).order_by(Budget.created_at)))
