"""`GET /v1/limits`: the rate limits in force, as configured and as the shared limiter currently applies them,
and the tenant's own intake limits (request rates and maxima, issue 14) with what it uses of them."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from service import status
from service.api.deps import CurrentKey, SessionDep, SettingsDep
from service.limits import policy, repository

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


class IntakeLimit(BaseModel):
    limit: int | None = Field(description="null: no limit.")
    source: Literal["default", "tenant"] = Field(
        description="`default`: the operator's setting (MMJOBS_...); `tenant`: this tenant's own override."
    )
    used: int | None = Field(None, description="What the tenant has now (maxima only).")


class IntakeLimits(BaseModel):
    disabled: bool = Field(description="A disabled tenant creates nothing and none of its work runs.")
    burst_seconds: float = Field(
        description="Request rates admit this many seconds' worth of requests at once (the `w` of RateLimit-Policy)."
    )
    requests_per_minute: IntakeLimit = Field(description="Requests per minute, all of the tenant's keys together.")
    key_requests_per_minute: IntakeLimit = Field(description="Requests per minute, per API key.")
    max_queued_jobs: IntakeLimit = Field(description="Jobs waiting to run (queued or retrying), batch requests too.")
    max_active_batches: IntakeLimit = Field(description="Batches not yet ended.")
    max_schedules: IntakeLimit
    max_stored_file_bytes: IntakeLimit = Field(description="Bytes of uploaded files kept (POST /v1/files, drop-ins).")


class Headroom(BaseModel):
    requests: int | None = Field(description="Requests the account may still send in this window (null: no limit).")
    tokens: int | None


class AccountModel(BaseModel):
    model: str
    configured: Rate
    used: Used | None
    headroom: Headroom | None


class AccountError(BaseModel):
    code: int | None = Field(description="MiniMax's code: 1004 not authorized, 2049 invalid key, 1008 no balance.")
    message: str | None


class AccountView(BaseModel):
    name: str
    base_url: str
    weight: float
    in_rotation: bool = Field(
        description="false: MiniMax refused the account (1004, 2049, 1008); probed until it answers."
    )
    since: float | None = Field(description="When it left or came back (epoch seconds); null: never changed.")
    last_error: AccountError | None
    models: list[AccountModel]


class LimitsView(BaseModel):
    object: str = "limits"
    account: str
    accounts: list[AccountView] = Field(
        default_factory=list,
        description="The shared upstream accounts (MMJOBS_UPSTREAM_ACCOUNTS): rotation state, limits and headroom "
        "per model in the current window. Keys are never shown.",
    )
    window_seconds: int = 60
    as_of: str | None
    models: list[ModelLimits]
    tenant: TenantLimits
    intake: IntakeLimits


@router.get(
    "/limits",
    response_model=LimitsView,
    summary="Rate limits: configured, effective and used in the current 60-second window",
    description="Per model on the upstream account (shared by every tenant), and your tenant's own caps. "
    "`effective` is lower than `configured` while the limiter backs off after MiniMax answered 429. "
    "`used` and `effective` come from the scheduler and are null while no scheduler runs. "
    "`intake`: your tenant's request rates and maxima at intake, with what it uses of each maximum.",
)
def get_limits(request: Request, key: CurrentKey, settings: SettingsDep, session: SessionDep) -> LimitsView:
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
        accounts=_accounts(settings, doc),
        intake=_intake(session, key, settings),
        account=settings.upstream_account,
        as_of=doc.get("at"),
        models=models,
        tenant=TenantLimits(
            tenant=tenant.name,
            configured={"rpm": tenant.rpm_limit, "tpm": tenant.tpm_limit, "concurrency": tenant.concurrency_limit},
            used=doc.get("tenants", {}).get(tenant.id),
        ),
    )


def _accounts(settings: SettingsDep, doc: dict[str, Any]) -> list[AccountView]:
    """Per shared account its state and, from the scheduler's last snapshot, use and headroom per model."""
    live = {a.get("name"): a for a in doc.get("accounts") or [] if isinstance(a, dict)}
    single_models = doc.get("models", {}) if not settings.upstream_accounts else {}
    views = []
    for account in settings.accounts():
        snap = live.get(account.name) or {}
        snap_models = snap.get("models") or single_models
        models = []
        for name, (rpm, tpm) in account.model_limits().items():
            m = snap_models.get(name) or {}
            used = Used.model_validate(m["used"]) if "used" in m else None
            headroom = None
            if used is not None:
                eff = m.get("effective") or {}
                cap_r, cap_t = eff.get("rpm") or rpm, eff.get("tpm") or tpm
                headroom = Headroom(requests=max(0, cap_r - used.requests), tokens=max(0, cap_t - used.tokens))
            models.append(AccountModel(model=name, configured=Rate(rpm=rpm, tpm=tpm), used=used, headroom=headroom))
        error = snap.get("last_error")
        views.append(
            AccountView(
                name=account.name,
                base_url=account.base_url,
                weight=account.weight,
                in_rotation=bool(snap.get("in_rotation", True)),
                since=snap.get("since"),
                last_error=AccountError.model_validate(error) if isinstance(error, dict) else None,
                models=models,
            )
        )
    return views


def _intake(session: SessionDep, key: CurrentKey, settings: SettingsDep) -> IntakeLimits:
    limits = policy.for_tenant(key.tenant, settings)
    tenant_id = key.tenant_id
    used = {
        "max_queued_jobs": repository.queued_jobs,
        "max_active_batches": repository.active_batches,
        "max_schedules": repository.schedules,
        "max_stored_file_bytes": repository.stored_file_bytes,
    }
    shown = {
        limit.name: IntakeLimit(
            limit=limit.value,
            source="tenant" if limit.source == "tenant" else "default",
            used=used[limit.name](session, tenant_id=tenant_id) if limit.name in used else None,
        )
        for limit in limits.all()
    }
    return IntakeLimits(
        disabled=key.tenant.disabled_at is not None, burst_seconds=settings.request_burst_seconds, **shown
    )
