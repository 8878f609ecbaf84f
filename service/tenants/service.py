"""Tenants and their API keys. Keys are shown once at creation and stored only as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy.orm import Session

from service.db import new_id
from service.models import ApiKey, Tenant
from service.tenants import repository

KEY_PREFIX = "mmj_"


@dataclass(frozen=True, kw_only=True)
class NewKey:
    key: ApiKey
    secret: str


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def get_or_create_tenant(session: Session, *, name: str) -> Tenant:
    tenant = repository.get_tenant_by_name(session, name=name)
    if tenant is None:
        tenant = Tenant(id=new_id("ten"), name=name)
        repository.add(session, tenant)
    return tenant


def create_key(session: Session, *, tenant_name: str, name: str = "") -> NewKey:
    tenant = get_or_create_tenant(session, name=tenant_name)
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(id=new_id("key"), tenant_id=tenant.id, name=name, prefix=secret[:12], key_hash=hash_key(secret))
    repository.add(session, key)
    return NewKey(key=key, secret=secret)


def authenticate(session: Session, *, secret: str) -> ApiKey | None:
    """The active key with this secret, or None (unknown or revoked)."""
    if not secret.startswith(KEY_PREFIX):
        return None
    return repository.get_active_key(session, key_hash=hash_key(secret))


def revoke_key(session: Session, *, key_id: str) -> bool:
    return repository.revoke_key(session, key_id=key_id)


def list_keys(session: Session, *, tenant_name: str | None = None) -> list[ApiKey]:
    if tenant_name is None:
        return repository.list_keys(session)
    tenant = repository.get_tenant_by_name(session, name=tenant_name)
    return [] if tenant is None else repository.list_keys(session, tenant_id=tenant.id)
