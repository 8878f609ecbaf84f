"""Budgets that cannot be overspent: admission reserves a job's maximum cost with one guarded UPDATE per budget
(`spent + reserved + amount <= limit`), the real cost moves into `spent` as each attempt is billed, and the
reservation is released when the job reaches a final state.

Lock order (service/db.py): budgets after the job (and its batch), and several budgets always in ascending id: every
function here that touches more than one locks them `ORDER BY id` first."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from service.db import id_in
from service.models import Budget, BudgetReservation, Job
from service.tenants import keycache


@dataclass(frozen=True, kw_only=True, slots=True)
class Refusal:
    budget: Budget
    amount: Decimal

    def message(self) -> str:
        b = self.budget
        left = max(Decimal(0), b.limit_usd - b.spent_usd - b.reserved_usd)
        scope = "this API key's" if b.api_key_id else "your tenant's"
        return (
            f"{scope} {b.period} budget of ${b.limit_usd:.2f} has ${left:.4f} left (spent ${b.spent_usd:.4f}, "
            f"${b.reserved_usd:.4f} held by unfinished jobs); this request may cost up to ${self.amount:.4f}. "
            "Raise the budget, or lower max_tokens."
        )


def month_start(now: datetime) -> datetime:
    return datetime(now.year, now.month, 1, tzinfo=UTC)


def applicable(session: Session, *, tenant_id: str, api_key_id: str | None) -> list[Budget]:
    query = select(Budget).where(Budget.tenant_id == tenant_id)
    rows = list(session.scalars(query))
    return [b for b in rows if b.api_key_id is None or b.api_key_id == api_key_id]


def budgeted_tenants(session: Session, *, tenant_ids: list[str]) -> set[str]:
    """Which of these tenants have any budget: the dispatcher skips admission for the others (one query a pass
    instead of two per job)."""
    if not tenant_ids:
        return set()
    return set(session.scalars(select(Budget.tenant_id).where(Budget.tenant_id.in_(tenant_ids)).distinct()))


def roll_periods(session: Session, *, tenant_id: str, now: datetime) -> None:
    """A monthly budget starts from zero in a new month."""
    start = month_start(now)
    stale = (Budget.tenant_id == tenant_id, Budget.period == "monthly", Budget.period_start < start)
    ids = list(session.scalars(select(Budget.id).where(*stale).order_by(Budget.id).with_for_update()))
    if ids:
        session.execute(
            update(Budget)
            .where(Budget.id.in_(ids), *stale)
            .values(spent_usd=0, period_start=start, soft_notified_at=None)
        )


def reserve(
    session: Session, *, job_id: str, tenant_id: str, api_key_id: str | None, amount: Decimal, now: datetime
) -> Refusal | None:
    """Hold `amount` on every budget that governs the job, all or none. None when admitted (or unbudgeted)."""
    roll_periods(session, tenant_id=tenant_id, now=now)
    budgets = applicable(session, tenant_id=tenant_id, api_key_id=api_key_id)
    if not budgets:
        return None
    savepoint = session.begin_nested()
    for budget in sorted(budgets, key=lambda b: b.id):  # one lock order: no deadlocks between admissions
        held = session.execute(
            update(Budget)
            .where(Budget.id == budget.id, Budget.spent_usd + Budget.reserved_usd + amount <= Budget.limit_usd)
            .values(reserved_usd=Budget.reserved_usd + amount)
            .returning(Budget.id)
        ).first()
        if held is None:
            savepoint.rollback()
            session.refresh(budget)
            return Refusal(budget=budget, amount=amount)
        session.add(BudgetReservation(job_id=job_id, budget_id=budget.id, amount_usd=amount))
    savepoint.commit()
    session.execute(update(Job).where(Job.id == job_id).values(budget_reserved=True))
    return None


def charge(session: Session, *, tenant_id: str, api_key_id: str | None, cost: Decimal, now: datetime) -> list[Budget]:
    """Add a billed attempt's cost to the budgets; returns the budgets that just crossed their soft limit."""
    if cost <= 0:
        return []
    budgets = applicable(session, tenant_id=tenant_id, api_key_id=api_key_id)
    ids = sorted(b.id for b in budgets)
    if not ids:
        return []
    # One lock order with reserve/release: the rows in ascending id before the multi-row UPDATE.
    session.execute(select(Budget.id).where(Budget.id.in_(ids)).order_by(Budget.id).with_for_update())
    session.execute(update(Budget).where(Budget.id.in_(ids)).values(spent_usd=Budget.spent_usd + cost))
    crossed = session.scalars(
        update(Budget)
        .where(
            Budget.id.in_(ids),
            Budget.soft_limit_usd.is_not(None),
            Budget.spent_usd >= Budget.soft_limit_usd,
            Budget.soft_notified_at.is_(None),
        )
        .values(soft_notified_at=now)
        .returning(Budget)
    ).all()
    return list(crossed)


def release(session: Session, *, job_ids: list[str]) -> None:
    """Give back what finished jobs held. The ids travel as one array parameter (never one per job: Postgres
    refuses more than 65,535), and the budgets are updated in ascending id."""
    if not job_ids:
        return
    held = session.execute(
        delete(BudgetReservation)
        .where(id_in(session, BudgetReservation.job_id, job_ids))
        .returning(BudgetReservation.budget_id, BudgetReservation.amount_usd)
    ).all()
    totals: dict[str, Decimal] = {}
    for budget_id, amount in held:
        totals[budget_id] = totals.get(budget_id, Decimal(0)) + amount
    for budget_id, amount in sorted(totals.items()):
        session.execute(update(Budget).where(Budget.id == budget_id).values(reserved_usd=Budget.reserved_usd - amount))


def upsert(
    session: Session,
    *,
    tenant_id: str,
    api_key_id: str | None,
    period: str,
    limit_usd: Decimal,
    soft_limit_usd: Decimal | None,
    now: datetime,
) -> Budget:
    """Set the tenant's (or key's) budget for a period; raising it lets paused batches continue at once."""
    from service.db import new_id

    existing = session.scalars(
        select(Budget).where(
            Budget.tenant_id == tenant_id,
            Budget.period == period,
            Budget.api_key_id.is_(None) if api_key_id is None else Budget.api_key_id == api_key_id,
        )
    ).one_or_none()
    if existing is None:
        existing = Budget(
            id=new_id("bud"),
            tenant_id=tenant_id,
            api_key_id=api_key_id,
            period=period,
            limit_usd=limit_usd,
            soft_limit_usd=soft_limit_usd,
            spent_usd=Decimal(0),
            reserved_usd=Decimal(0),
            period_start=month_start(now) if period == "monthly" else now,
        )
        session.add(existing)
    else:
        existing.limit_usd = limit_usd
        existing.soft_limit_usd = soft_limit_usd
    session.flush()
    keycache.changed_after_commit(session)  # API processes that knew the tenant had no budget check it again
    return existing
