"""The usage ledger: one append-only row per attempt that consumed tokens, priced when it is written.

Exactly once: (job_id, attempt) is unique and the row is inserted with ON CONFLICT DO NOTHING; the job's, the
batch's and the budgets' totals move only when that insert happened. A worker whose COMMIT reply was lost
writes the same outcome again (execution.persist) and adds nothing the second time.

Lock order (the project's global one): the job row, then budgets by ascending id (budgets.charge); the batch's
row is not locked (its usage goes into a tally). The ledger row itself locks nothing anyone else waits for but its
unique index entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from service.batches import tally
from service.models import Budget, Job, UsageEntry
from service.pricing import PriceTable, TokenCounts
from service.usage import budgets


def record(
    session: Session,
    *,
    job_id: str,
    attempt: int,
    tenant_id: str,
    api_key_id: str | None,
    batch_id: str | None,
    model: str,
    format: str,
    upstream_request_id: str | None,
    usage: Mapping[str, int],
    priority: bool,
    prices: PriceTable,
    now: datetime,
    estimated: bool = False,
    batch_usage: dict[str, dict[str, Any]] | None = None,
    budgeted: bool = True,
    account: str | None = None,
) -> list[Budget]:
    """Write the attempt's row and, if it was not there yet, add its tokens and cost to the job, its batch and the
    budgets; returns budgets that crossed their soft limit with this charge. An attempt that consumed nothing
    writes nothing. `estimated`: the upstream's own usage never arrived (a broken or stopped call). The batch's
    usage goes into a tally (service/batches/tally.py), or into `batch_usage` for the caller's own tally.
    `budgeted=False`: the tenant had no budget when the attempt was claimed (the claim says so), so no budget is
    looked up or charged; a budget created while the attempt ran starts counting from the tenant's next attempt."""
    tokens = TokenCounts(
        input_tokens=int(usage.get("input_tokens", 0)),
        output_tokens=int(usage.get("output_tokens", 0)),
        cache_read_tokens=int(usage.get("cache_read_tokens", 0)),
        cache_write_tokens=int(usage.get("cache_write_tokens", 0)),
    )
    if not any((tokens.input_tokens, tokens.output_tokens, tokens.cache_read_tokens, tokens.cache_write_tokens)):
        return []
    cost = prices.cost(model, tokens, priority=priority)
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    inserted = session.execute(
        insert(UsageEntry)
        .values(
            at=now,
            tenant_id=tenant_id,
            api_key_id=api_key_id,
            job_id=job_id,
            batch_id=batch_id,
            attempt=attempt,
            model=model,
            format=format,
            upstream_request_id=upstream_request_id,
            account=account,
            input_tokens=tokens.input_tokens,
            output_tokens=tokens.output_tokens,
            cache_read_tokens=tokens.cache_read_tokens,
            cache_write_tokens=tokens.cache_write_tokens,
            priority_tier=priority,
            cost_usd=cost,
            price_version=prices.version,
            estimated=estimated,
        )
        .on_conflict_do_nothing(index_elements=[UsageEntry.job_id, UsageEntry.attempt])
        .returning(UsageEntry.id)
    ).scalar_one_or_none()
    if inserted is None:
        return []  # this attempt was billed already: its totals moved then
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(
            input_tokens=Job.input_tokens + tokens.input_tokens,
            output_tokens=Job.output_tokens + tokens.output_tokens,
            cache_read_tokens=Job.cache_read_tokens + tokens.cache_read_tokens,
            cache_write_tokens=Job.cache_write_tokens + tokens.cache_write_tokens,
            cost_usd=Job.cost_usd + cost,
        )
    )
    if batch_id is not None:
        billed: dict[str, Any] = {
            "input_tokens": tokens.input_tokens,
            "output_tokens": tokens.output_tokens,
            "cache_read_tokens": tokens.cache_read_tokens,
            "cache_write_tokens": tokens.cache_write_tokens,
            "cost_usd": cost,
        }
        if batch_usage is None:
            tally.add(session, [{"batch_id": batch_id, **billed}])
        else:  # the caller writes it in its own tally (transitions.finish, with the job's count)
            batch_usage.setdefault(batch_id, {}).update(billed)
    if not budgeted:
        return []
    return budgets.charge(session, tenant_id=tenant_id, api_key_id=api_key_id, cost=cost, now=now)


def zero() -> Decimal:
    return Decimal(0)
