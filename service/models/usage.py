from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import ForeignKey, Index, Numeric, String, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column

from service.db import BigIntPK, utcnow
from service.models.base import Base, CreatedAtMixin

USD = Numeric(18, 9)


class UsageEntry(Base):
    """Append-only: one row per upstream attempt that consumed tokens (failed attempts too, when billed).

    (job_id, attempt) is unique: a worker that writes an outcome twice (a COMMIT whose reply was lost, then a
    retry) finds its row there and adds nothing a second time."""

    __tablename__ = "usage_ledger"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    api_key_id: Mapped[str | None] = mapped_column(String(40))
    job_id: Mapped[str] = mapped_column(String(40))
    batch_id: Mapped[str | None] = mapped_column(String(48))
    attempt: Mapped[int]
    model: Mapped[str] = mapped_column(String(64))
    format: Mapped[str] = mapped_column(String(16))
    upstream_request_id: Mapped[str | None] = mapped_column(String(128))
    account: Mapped[str | None] = mapped_column(String(120))  # as on the attempt (service/models/job.py)
    input_tokens: Mapped[int]
    output_tokens: Mapped[int]
    cache_read_tokens: Mapped[int]
    cache_write_tokens: Mapped[int]
    priority_tier: Mapped[bool] = mapped_column(default=False)
    cost_usd: Mapped[Decimal] = mapped_column(USD)
    price_version: Mapped[str] = mapped_column(String(64))
    # The stream broke (or was stopped) before the upstream's own usage arrived: input is MiniMax's count_tokens
    # or the intake estimate, output is counted from the text and thinking received.
    estimated: Mapped[bool] = mapped_column(default=False, server_default=false())

    __table_args__ = (
        Index("ix_usage_ledger_tenant_id_at", "tenant_id", "at"),
        UniqueConstraint("job_id", "attempt", name="uq_usage_ledger_job_id_attempt"),
    )


class Budget(CreatedAtMixin, Base):
    """A USD limit for a tenant (or one of its API keys), monthly or in total. `reserved_usd` holds the maximum cost
    of admitted jobs not finished yet, so concurrent admissions can never overspend."""

    __tablename__ = "budgets"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    api_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"))
    period: Mapped[str] = mapped_column(String(16))  # monthly | total
    limit_usd: Mapped[Decimal] = mapped_column(USD)
    soft_limit_usd: Mapped[Decimal | None] = mapped_column(USD)
    spent_usd: Mapped[Decimal] = mapped_column(USD, default=Decimal(0))
    reserved_usd: Mapped[Decimal] = mapped_column(USD, default=Decimal(0))
    period_start: Mapped[datetime]
    soft_notified_at: Mapped[datetime | None]

    __table_args__ = (Index("ix_budgets_tenant_id", "tenant_id"),)


class BudgetReservation(Base):
    """What one job holds on one budget until it finishes."""

    __tablename__ = "budget_reservations"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    budget_id: Mapped[str] = mapped_column(ForeignKey("budgets.id", ondelete="CASCADE"), primary_key=True)
    amount_usd: Mapped[Decimal] = mapped_column(USD)
