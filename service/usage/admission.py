"""Admission against budgets: what a request may cost at most, and holding that on the budgets."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy.orm import Session

from service.catalog import ModelInfo
from service.pricing import PriceTable
from service.usage import budgets


@dataclass(frozen=True, kw_only=True, slots=True)
class Estimate:
    model: str
    estimated_input_tokens: int
    max_output_tokens: int
    cost_min: Decimal
    cost_max: Decimal
    price_version: str


def estimate(
    prices: PriceTable, *, model: ModelInfo, input_tokens: int, max_tokens: int | None, priority: bool = False
) -> Estimate:
    """Least (input only) and most (input plus every output token allowed) one call can cost. Without max_tokens
    the model's own output limit is the most it can write."""
    max_out = max_tokens if max_tokens is not None else model.max_output_tokens
    least, most = prices.estimate(model.name, input_tokens=input_tokens, max_output_tokens=max_out, priority=priority)
    return Estimate(
        model=model.name,
        estimated_input_tokens=input_tokens,
        max_output_tokens=max_out,
        cost_min=least,
        cost_max=most,
        price_version=prices.version,
    )


def admit(
    session: Session, *, job_id: str, tenant_id: str, api_key_id: str | None, amount: Decimal, now: datetime
) -> budgets.Refusal | None:
    return budgets.reserve(session, job_id=job_id, tenant_id=tenant_id, api_key_id=api_key_id, amount=amount, now=now)
