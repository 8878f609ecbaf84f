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
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from service.batches import tally
from service.db import UNSYNCED
from service.models import Budget, Job, UsageEntry
from service.pricing import PriceTable, TokenCounts
from service.usage import budgets


@dataclass(frozen=True)
class Priced:
    """An attempt's tokens and what they cost, priced once (`price`) for the job's totals and its ledger row."""

    tokens: TokenCounts
    cost: Decimal

    def job_totals(self, sign: int = 1) -> dict[str, Any]:
        """The job's usage columns moved by this charge (or back, `sign=-1`), as UPDATE values."""
        return {
            "input_tokens": Job.input_tokens + sign * self.tokens.input_tokens,
            "output_tokens": Job.output_tokens + sign * self.tokens.output_tokens,
            "cache_read_tokens": Job.cache_read_tokens + sign * self.tokens.cache_read_tokens,
            "cache_write_tokens": Job.cache_write_tokens + sign * self.tokens.cache_write_tokens,
            "cost_usd": Job.cost_usd + sign * self.cost,
        }


def price(usage: Mapping[str, int], *, model: str, priority: bool, prices: PriceTable) -> Priced | None:
    """The attempt's usage priced, or None if it consumed nothing (an attempt that consumed nothing writes nothing)."""
    tokens = TokenCounts(
        input_tokens=int(usage.get("input_tokens", 0)),
        output_tokens=int(usage.get("output_tokens", 0)),
        cache_read_tokens=int(usage.get("cache_read_tokens", 0)),
        cache_write_tokens=int(usage.get("cache_write_tokens", 0)),
    )
    if not any((tokens.input_tokens, tokens.output_tokens, tokens.cache_read_tokens, tokens.cache_write_tokens)):
        return None
    return Priced(tokens, prices.cost(model, tokens, priority=priority))


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
    priced: Priced,
    priority: bool,
    prices: PriceTable,
    now: datetime,
    estimated: bool = False,
    batch_usage: dict[str, dict[str, Any]] | None = None,
    budgeted: bool = True,
    account: str | None = None,
    job_totals_added: bool = False,
) -> list[Budget]:
    """Write the attempt's row and, if it was not there yet, add its tokens and cost to the job, its batch and the
    budgets; returns budgets that crossed their soft limit with this charge. `estimated`: the upstream's own usage
    never arrived (a broken or stopped call). The batch's usage goes into a tally (service/batches/tally.py), or
    into `batch_usage` for the caller's own tally. `budgeted=False`: the tenant had no budget when the attempt was
    claimed (the claim says so), so no budget is looked up or charged; a budget created while the attempt ran
    starts counting from the tenant's next attempt.

    `job_totals_added`: the caller's own UPDATE of the job (transitions.finish, when it moved the job out of this
    very attempt) already added the totals, one statement fewer. The row cannot exist then (only a finish writes
    ledger rows, and a finish of this attempt moves the job out of it or finds it gone, under the job's lock), but
    should it, the job's totals are taken back: billed once whatever happens."""
    tokens, cost = priced.tokens, priced.cost
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
    if inserted is None:  # this attempt was billed already: its totals moved then
        if job_totals_added:
            session.execute(
                update(Job).where(Job.id == job_id).values(priced.job_totals(-1)),
                execution_options=UNSYNCED,
            )
        return []
    if not job_totals_added:
        session.execute(
            update(Job).where(Job.id == job_id).values(priced.job_totals()),
            execution_options=UNSYNCED,
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
