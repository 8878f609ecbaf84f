"""The intake limits that apply to a tenant: the operator's defaults (MMJOBS_...) with the tenant's overrides
(`mmjobs tenants limits`) laid over them. Read from the tenant row the authenticated key already carries, so
working them out costs no query."""

from __future__ import annotations

from dataclasses import dataclass

from service.config import Settings
from service.models import Tenant

# The names users see (in /v1/limits, in errors, as CLI options), in the order they are shown.
NAMES = (
    "requests_per_minute",
    "key_requests_per_minute",
    "max_queued_jobs",
    "max_active_batches",
    "max_schedules",
    "max_stored_file_bytes",
)


@dataclass(frozen=True, kw_only=True)
class Limit:
    name: str
    value: int | None  # None: no limit
    source: str  # "default" (the operator's setting) or "tenant" (this tenant's override)


@dataclass(frozen=True, kw_only=True)
class IntakeLimits:
    requests_per_minute: Limit
    key_requests_per_minute: Limit
    max_queued_jobs: Limit
    max_active_batches: Limit
    max_schedules: Limit
    max_stored_file_bytes: Limit

    def all(self) -> list[Limit]:
        return [getattr(self, name) for name in NAMES]


def _limit(name: str, override: int | None, default: int) -> Limit:
    # 0 means "no limit", as the operator's setting and as a tenant's override (`--max-... unlimited`).
    if override is not None:
        return Limit(name=name, value=override or None, source="tenant")
    return Limit(name=name, value=default or None, source="default")


def for_tenant(tenant: Tenant, settings: Settings) -> IntakeLimits:
    return IntakeLimits(**{name: _limit(name, getattr(tenant, name), getattr(settings, name)) for name in NAMES})
