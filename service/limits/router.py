"""`GET /v1/limits`: the rate limits in force, as configured and as the shared limiter currently applies them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel

from service import status
from service.api.deps import CurrentKey, SettingsDep

router = APIRouter(prefix="/v1", tags=["limits"])


class Rate(BaseModel):
    rpm: int | None
    tpm: int | None


class Used(BaseModel):
    requests: int
    tokens: int


class ModelLimits(BaseModel):
    model: str
    configured: Rate
    effective: Rate | None
    used: Used | None
    penalized_at: float | None = None


class TenantLimits(BaseModel):
    tenant: str
    configured: dict[str, int | None]
    used: dict[str, Any] | None


class LimitsView(BaseModel):
    object: str = "limits"
    account: str
    window_seconds: int = 60
    as_of: str | None
    models: list[ModelLimits]
    tenant: TenantLimits


@router.get(
    "/limits",
    response_model=LimitsView,
    summary="Rate limits: configured, effective and used in the current 60-second window",
    description="Per model on the upstream account (shared by every tenant), and your tenant's own caps. "
    "`effective` is lower than `configured` while the limiter backs off after MiniMax answered 429. "
    "`used` and `effective` come from the scheduler and are null while no scheduler runs.",
)
def get_limits(request: Request, key: CurrentKey, settings: SettingsDep) -> LimitsView:
    doc = status.read(request.app.state.redis)
    live = doc.get("models", {})
    models = []
    for name, (rpm, tpm) in settings.model_limits().items():
        snap = live.get(name) or {}
        models.append(
            ModelLimits(
                model=name,
                configured=Rate(rpm=rpm, tpm=tpm),
                effective=Rate.model_validate(snap["effective"]) if "effective" in snap else None,
                used=Used.model_validate(snap["used"]) if "used" in snap else None,
                penalized_at=snap.get("penalized_at"),
            )
        )
    tenant = key.tenant
    return LimitsView(
        account=settings.upstream_account,
        as_of=doc.get("at"),
        models=models,
        tenant=TenantLimits(
            tenant=tenant.name,
            configured={"rpm": tenant.rpm_limit, "tpm": tenant.tpm_limit, "concurrency": tenant.concurrency_limit},
            used=doc.get("tenants", {}).get(tenant.id),
        ),
    )
