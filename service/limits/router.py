"""`GET /v1/limits`: the rate limits in force, as configured and as the shared limiter currently applies them,
and the tenant's own intake limits (request rates and maxima, issue 14) with what it uses of them."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from service import status
from service.api.deps import CurrentKey, SessionDep, SettingsDep
from service.api.errors import APIError
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


class OwnAccount(BaseModel):
    account: str
    fingerprint: str = Field(description="The key's last four characters; the key itself is never shown.")
    base_url: str
    models: list[AccountModel]


class UpstreamKeyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_key: str = Field(description="Your MiniMax key; stored encrypted, never shown back.")
    base_url: str = Field(
        "https://api.minimax.io", description="https://api.minimaxi.com for a mainland-China account."
    )
    rate_limits: dict[str, Any] | None = Field(
        None, description='Your account\'s limits per model, e.g. {"MiniMax-M2.7": {"rpm": 60}}; unset: published.'
    )


class UpstreamKeyView(BaseModel):
    object: str = "upstream_key"
    account: str
    fingerprint: str
    base_url: str
    rate_limits: dict[str, Any]


class LimitsView(BaseModel):
    object: str = "limits"
    account: str
    own_account: OwnAccount | None = Field(
        None, description="Your own MiniMax key's account (PUT /v1/limits/upstream-key): all your jobs run on it."
    )
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
        own_account=_own_account(session, key.tenant_id, doc),
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


@router.put(
    "/limits/upstream-key",
    response_model=UpstreamKeyView,
    summary="Bring your own MiniMax key",
    description="Stored encrypted; from then on all of your tenant's jobs run on it (and only yours), under the "
    "limits you declare, billed in your usage as before. The key is never shown back, only its fingerprint.",
)
def put_upstream_key(
    body: UpstreamKeyBody, key: CurrentKey, settings: SettingsDep, session: SessionDep
) -> UpstreamKeyView:
    from service.accounts import tenant_keys

    if not settings.secret_key:
        raise APIError(
            403,
            "permission_error",
            "this service does not store tenants' own MiniMax keys (its operator has not set MMJOBS_SECRET_KEY)",
        )
    try:
        tenant_keys.set_key(
            session,
            tenant_id=key.tenant_id,
            api_key=body.api_key,
            base_url=body.base_url,
            rate_limits=body.rate_limits,
            settings=settings,
        )
    except tenant_keys.TenantKeyError as exc:
        message = str(exc)
        field = message.split(":", 1)[0] if message.startswith(("api_key", "base_url", "rate_limits")) else None
        raise APIError(400 if field else 403, "invalid_request_error", message, field=field) from None
    session.commit()
    shown = tenant_keys.describe(session, tenant_id=key.tenant_id)
    assert shown is not None
    return UpstreamKeyView(**shown)


@router.delete("/limits/upstream-key", status_code=204, summary="Stop using your own MiniMax key")
def delete_upstream_key(key: CurrentKey, session: SessionDep) -> Response:
    from service.accounts import tenant_keys

    if not tenant_keys.remove_key(session, tenant_id=key.tenant_id):
        raise APIError(404, "not_found", "your tenant has no own MiniMax key")
    session.commit()
    return Response(status_code=204)


def _own_account(session: SessionDep, tenant_id: str, doc: dict[str, Any]) -> OwnAccount | None:
    from service.accounts import tenant_keys

    shown = tenant_keys.describe(session, tenant_id=tenant_id)
    if shown is None:
        return None
    from service.catalog import configured_limits

    limits = configured_limits({m: (v.get("rpm"), v.get("tpm")) for m, v in shown["rate_limits"].items()})
    live = (doc.get("tenant_accounts") or {}).get(tenant_id) or {}
    return OwnAccount(
        account=shown["account"],
        fingerprint=shown["fingerprint"],
        base_url=shown["base_url"],
        models=[_model_view(name, rpm, tpm, live.get(name) or {}) for name, (rpm, tpm) in limits.items()],
    )


def _model_view(name: str, rpm: int, tpm: int, m: dict[str, Any]) -> AccountModel:
    used = Used.model_validate(m["used"]) if "used" in m else None
    headroom = None
    if used is not None:
        eff = m.get("effective") or {}
        cap_r, cap_t = eff.get("rpm") or rpm, eff.get("tpm") or tpm
        headroom = Headroom(requests=max(0, cap_r - used.requests), tokens=max(0, cap_t - used.tokens))
    return AccountModel(model=name, configured=Rate(rpm=rpm, tpm=tpm), used=used, headroom=headroom)


def _accounts(settings: SettingsDep, doc: dict[str, Any]) -> list[AccountView]:
    """Per shared account its state and, from the scheduler's last snapshot, use and headroom per model."""
    live = {a.get("name"): a for a in doc.get("accounts") or [] if isinstance(a, dict)}
    single_models = doc.get("models", {}) if not settings.upstream_accounts else {}
    views = []
    for account in settings.accounts():
        snap = live.get(account.name) or {}
        snap_models = snap.get("models") or single_models
        models = [
            _model_view(name, rpm, tpm, snap_models.get(name) or {})
            for name, (rpm, tpm) in account.model_limits().items()
        ]
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
