from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.db import utcnow
from service.models import ApiKey, Tenant


def get_tenant_by_name(session: Session, *, name: str) -> Tenant | None:
    return session.scalars(select(Tenant).where(Tenant.name == name)).one_or_none()


def add(session: Session, row: Tenant | ApiKey) -> None:
    session.add(row)
    session.flush()


def get_active_key(session: Session, *, key_hash: str) -> ApiKey | None:
    return session.scalars(select(ApiKey).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))).one_or_none()


def list_keys(session: Session, *, tenant_id: str | None = None) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.created_at)
    if tenant_id is not None:
        query = query.where(ApiKey.tenant_id == tenant_id)
    return list(session.scalars(query))


def revoke_key(session: Session, *, key_id: str) -> ApiKey | None:
    """Revoke an active key; the key, or None if there is no active key with this id."""
    query = select(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None)).with_for_update(of=ApiKey)
    key = session.scalars(query).one_or_none()
    if key is not None:
        key.revoked_at = utcnow()
        session.flush()
    return key


def caps(session: Session, *, tenant_ids: list[str]) -> dict[str, tuple[int | None, int | None, int | None]]:
    """Each tenant's (rpm, tpm, concurrency) caps."""
    if not tenant_ids:
        return {}
    rows = session.execute(
        select(Tenant.id, Tenant.rpm_limit, Tenant.tpm_limit, Tenant.concurrency_limit).where(Tenant.id.in_(tenant_ids))
    ).all()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def set_caps(session: Session, *, name: str, changes: dict[str, int | None]) -> bool:
    """Change some of a tenant's caps: keys rpm_limit, tpm_limit, concurrency_limit, or an intake limit
    (service/limits/policy.NAMES); None removes a cap (an intake limit: back to the operator's default)."""
    if not changes:
        return get_tenant_by_name(session, name=name) is not None
    from service.tenants import keycache

    keycache.changed_after_commit(session)  # the API processes' cached tenants (service/tenants/keycache.py)
    result = session.execute(update(Tenant).where(Tenant.name == name).values(**changes))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def capped(session: Session) -> list[Tenant]:
    """Tenants with any cap set."""
    return list(
        session.scalars(
            select(Tenant).where(
                Tenant.rpm_limit.is_not(None) | Tenant.tpm_limit.is_not(None) | Tenant.concurrency_limit.is_not(None)
            )
        )
    )


def set_disabled(session: Session, *, name: str, at: datetime | None) -> Tenant | None:
    """Disable the tenant as of `at`, or enable it (None). The tenant, or None if there is none of that name."""
    tenant = session.scalars(select(Tenant).where(Tenant.name == name).with_for_update()).one_or_none()
    if tenant is not None:
        tenant.disabled_at = at
        session.flush()
    return tenant
