"""`GET /v1/usage` (ledger totals) and `GET /v1/budgets`."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from service import accounts
from service.api.deps import CurrentKey, SessionDep
from service.api.errors import APIError
from service.usage import repository
from service.validation import Moment

router = APIRouter(prefix="/v1", tags=["usage"])


class EstimatedUsage(BaseModel):
    """The part of a row's totals that is our own count, not MiniMax's: attempts whose stream broke or that were
    stopped (canceled, deadline) before MiniMax reported usage. Input is MiniMax's count_tokens or the intake
    estimate (which errs high), output the tokens of the text and thinking received."""

    attempts: int
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal


class UsageRow(BaseModel):
    key: str | None = Field(None, description="The group: a day (YYYY-MM-DD), model, API key id or batch id.")
    attempts: int
    jobs: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: Decimal
    estimated: EstimatedUsage = Field(description="Included in the totals above; see EstimatedUsage.")

    @classmethod
    def of(cls, row: dict[str, Any]) -> UsageRow:
        estimated = EstimatedUsage(
            attempts=row["estimated_attempts"],
            input_tokens=row["estimated_input_tokens"],
            output_tokens=row["estimated_output_tokens"],
            cost_usd=row["estimated_cost_usd"],
        )
        key = row.get("key")
        plain = {k: v for k, v in row.items() if not k.startswith("estimated_") and k != "key"}
        return cls(**plain, key=None if key is None else str(key), estimated=estimated)


class UsageReport(BaseModel):
    object: Literal["usage"] = "usage"
    start: datetime | None = Field(None, alias="from")
    end: datetime | None = Field(None, alias="to")
    group_by: str | None
    data: list[UsageRow]
    total: UsageRow

    model_config = {"populate_by_name": True}


class BudgetOut(BaseModel):
    id: str
    api_key_id: str | None
    period: str
    limit_usd: Decimal
    soft_limit_usd: Decimal | None
    spent_usd: Decimal
    reserved_usd: Decimal = Field(description="Held by admitted jobs that have not finished.")
    remaining_usd: Decimal
    period_start: datetime


@router.get(
    "/usage",
    response_model=UsageReport,
    response_model_by_alias=True,
    summary="Token usage and cost from the ledger",
    description="Every attempt that consumed tokens, failed and canceled ones included. `estimated`: the part "
    "counted by us because the call broke or was stopped before MiniMax reported its usage. `from` / `to`: "
    "RFC 3339 (to is exclusive). `group_by`: day, model, api_key, batch or account (the upstream account: "
    "`own_key` for your own MiniMax key, an operator account's name, or null for the service's single key).",
)
def usage(
    session: SessionDep,
    key: CurrentKey,
    start: Annotated[Moment | None, Query(alias="from")] = None,
    end: Annotated[Moment | None, Query(alias="to")] = None,
    group_by: Annotated[Literal["day", "model", "api_key", "batch", "account"] | None, Query()] = None,
) -> UsageReport:
    for name, moment in (("from", start), ("to", end)):
        if moment is not None and moment.tzinfo is None:
            raise APIError(422, "invalid_request", f"{name}: give a timezone, e.g. 2026-01-01T00:00:00Z", field=name)
    rows = repository.totals(session, tenant_id=key.tenant_id, start=start, end=end, group_by=group_by)
    [total] = repository.totals(session, tenant_id=key.tenant_id, start=start, end=end, group_by=None)
    return UsageReport(
        start=start,
        end=end,
        group_by=group_by,
        data=[UsageRow.of(_shown(r, group_by)) for r in rows] if group_by else [],
        total=UsageRow.of(total),
    )


@router.get("/budgets", response_model=list[BudgetOut], summary="Your tenant's budgets and what is left")
def list_budgets(session: SessionDep, key: CurrentKey) -> list[BudgetOut]:
    return [
        BudgetOut(
            id=b.id,
            api_key_id=b.api_key_id,
            period=b.period,
            limit_usd=b.limit_usd,
            soft_limit_usd=b.soft_limit_usd,
            spent_usd=b.spent_usd,
            reserved_usd=b.reserved_usd,
            remaining_usd=max(Decimal(0), b.limit_usd - b.spent_usd - b.reserved_usd),
            period_start=b.period_start,
        )
        for b in repository.budgets_of(session, tenant_id=key.tenant_id)
    ]


def _shown(row: dict[str, Any], group_by: str | None) -> dict[str, Any]:
    """A row as the tenant sees it: by account, its own key is `own_key` (service/accounts/ `public_name`)."""
    if group_by == "account":
        return {**row, "key": accounts.public_name(row["key"])}
    return row
